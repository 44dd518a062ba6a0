// The cost page: draws everything from the JSON block #spendwatch-data (text only, never markup from the data, so a
// category or document name cannot inject anything). A served page fetches other ranges from its own origin.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("spendwatch-data").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var SERIES = 7; // groups drawn in their own colour; the rest are "other"
  var RANGE_NAMES = { "24h": "Last 24 hours", "48h": "Last 48 hours", "7d": "Last 7 days", "30d": "Last 30 days",
    "90d": "Last 90 days" };
  var GROUP_NAMES = { model: "Model", category: "Category", operation: "Operation", stage: "LightRAG stage",
    provider: "Provider" };
  var KIND_NAMES = { threshold_crossed: "Threshold crossed", guard_refused: "Guard refused calls",
    guard_degraded: "Guard degraded calls", ledger_unavailable: "Ledger unavailable" };
  var MAX_ALERT_ROWS = 200;
  var analyticsCache = Object.assign({}, data.analytics);

  // --- building blocks ------------------------------------------------------------------------------------------

  function put(node, attributes, children) {
    Object.keys(attributes || {}).forEach(function (name) {
      var value = attributes[name];
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.append(typeof child === "object" ? child : document.createTextNode(String(child)));
    });
    return node;
  }
  function el(tag, attributes, children) { return put(document.createElement(tag), attributes, children); }
  function svg(tag, attributes, children) { return put(document.createElementNS(SVG, tag), attributes, children); }
  function fill(id, children) {
    var node = document.getElementById(id);
    node.replaceChildren.apply(node, children);
  }

  function usd(amount) {
    if (amount === null || amount === undefined) return "n/a";
    return (amount < 0 ? "-$" : "$") + Math.abs(amount).toFixed(Math.abs(amount) >= 1 ? 2 : 6);
  }
  function count(n) { return Number(n).toLocaleString("en-US"); }
  function percent(ratio) { return ratio === null || ratio === undefined ? "n/a" : (ratio * 100).toFixed(1) + "%"; }
  function when(text) { return text ? text.slice(0, 10) + " " + text.slice(11, 16) + " UTC" : ""; }
  function label(key) { return key === null || key === undefined || key === "" ? "(none)" : String(key); }

  function money(amount, attributes) {
    return el("td", Object.assign({ class: "num", "data-value": amount }, attributes), [usd(amount)]);
  }
  function number(n, attributes) {
    return el("td", Object.assign({ class: "num", "data-value": n }, attributes), [count(n)]);
  }
  function table(caption, headings, rows, attributes) {
    var head = el("tr", {}, headings.map(function (heading) {
      var numeric = heading.charAt(0) === "#";
      return el("th", { scope: "col", class: numeric ? "num" : null }, [numeric ? heading.slice(1) : heading]);
    }));
    return el("table", attributes, [el("caption", {}, [caption]), el("thead", {}, [head]), el("tbody", {}, rows)]);
  }
  function nothing(text) { return el("p", { class: "muted" }, [text]); }

  // --- header, summary, budgets ---------------------------------------------------------------------------------

  function drawHeader() {
    fill("generated", ["As of " + when(data.generated_at) + " · budgets in time zone " + data.timezone]);
    fill("prices-as-of", [data.prices_as_of ? "genai-prices data of " + data.prices_as_of.slice(0, 10)
      : "the price data's date is unknown"]);
    document.getElementById("prices-as-of").setAttribute("data-value", data.prices_as_of || "");
    fill("summary-days", [String(data.summary_days)]);
    var s = data.summary;
    var cards = [
      ["cost_usd", "Spend", usd(s.cost_usd)], ["calls", "Calls", count(s.calls)],
      ["unpriced_calls", "Unpriced calls", count(s.unpriced_calls)],
      ["guard_refused_calls", "Calls refused by the guard", count(s.guard_refused_calls)],
      ["guard_degraded_calls", "Calls degraded by the guard", count(s.guard_degraded_calls)],
      ["threshold_crossings", "Threshold crossings", count(s.threshold_crossings)]
    ];
    fill("summary", cards.map(function (card) {
      return el("div", {}, [el("dt", {}, [card[1]]),
        el("dd", { id: "summary-" + card[0], "data-value": s[card[0]] }, [card[2]])]);
    }));
  }

  function gauge(budget) {
    var width = 300, top = 4, height = 14;
    var used = budget.used_ratio === null ? 2 : budget.used_ratio;
    var scale = Math.max(1.1, Math.min(used, 2) * 1.05); // room past the limit for an overspent budget
    var levels = Object.keys(budget.thresholds);
    var described = usd(budget.spent_usd) + " of " + usd(budget.limit_usd) + " spent (" + percent(budget.used_ratio) +
      "), health " + budget.health + "; thresholds " + levels.map(function (level) {
      return level + " at " + percent(budget.thresholds[level]);
    }).join(", ");
    var name = budget.name + " " + budget.period + " budget";
    var parts = [svg("title", {}, [name + ": " + described]),
      svg("rect", { class: "track", x: 0, y: top, width: width, height: height, rx: 3 }),
      svg("rect", { class: "fill " + budget.health, x: 0, y: top, height: height, rx: 3,
        width: (width * Math.min(used, scale) / scale).toFixed(1) })];
    levels.forEach(function (level) {
      var x = (width * budget.thresholds[level] / scale).toFixed(1);
      parts.push(svg("line", { class: "tick", x1: x, x2: x, y1: 1, y2: top + height + 3 }, [svg("title", {},
        [level + " at " + percent(budget.thresholds[level])])]));
    });
    return svg("svg", { class: "gauge", viewBox: "0 0 " + width + " 24", role: "img", "aria-label": name + ": " +
      described }, parts);
  }

  function drawBudgets() {
    var budgets = data.overview.budgets;
    if (!budgets.length) {
      fill("budgets", [nothing("No budgets are configured.")]);
      return;
    }
    fill("budgets", budgets.map(function (b) {
      function row(key, title, text, value) {
        return [el("dt", {}, [title]), el("dd", { "data-field": key, "data-value": value }, [text])];
      }
      var thresholds = Object.keys(b.thresholds).map(function (level) {
        return level + " " + percent(b.thresholds[level]);
      }).join(" · ");
      var projected = usd(b.projected_period_end_usd) + (b.projected_to_exceed ? " (over the limit)" : "");
      var items = [].concat(
        row("spent_usd", "Spent", usd(b.spent_usd), b.spent_usd),
        row("limit_usd", "Limit", usd(b.limit_usd) + (b.limit_source === "runtime" ? " (set at run time)" : ""),
          b.limit_usd),
        row("used_ratio", "Used", percent(b.used_ratio), b.used_ratio === null ? "" : b.used_ratio),
        row("remaining_usd", "Remaining", usd(b.remaining_usd), b.remaining_usd),
        row("health", "Health", b.health, b.health),
        row("projected_period_end_usd", "Projected at period end", projected, b.projected_period_end_usd),
        row("period_end", "Period ends", when(b.period_end), b.period_end),
        row("thresholds", "Thresholds", thresholds, null));
      items[9].setAttribute("class", "health " + b.health);
      return el("article", { class: "budget", "data-budget": b.name + "/" + b.period }, [
        el("h3", {}, [b.name + " · " + (b.period === "day" ? "daily" : b.period === "month" ? "monthly" : b.period)]),
        el("p", { class: "muted" }, [b.scope]), gauge(b), el("dl", {}, items)]);
    }));
  }

  // --- spend over time ------------------------------------------------------------------------------------------

  function seriesOf(answer) {
    var shown = answer.totals.slice(0, SERIES).map(function (g) { return g[answer.by]; });
    return { shown: shown, other: answer.totals.length > SERIES };
  }
  function seriesIndex(series, key) {
    var index = series.shown.indexOf(key);
    return index < 0 ? SERIES : index;
  }
  function seriesClass(index) { return index >= SERIES ? "s-other" : "s" + index; }
  // A day bucket starts at its local midnight, written in UTC: named by its day in the budgets' time zone.
  var dayFormat = new Intl.DateTimeFormat("en-US", { timeZone: data.timezone, year: "numeric", month: "2-digit",
    day: "2-digit" });
  function localDay(text) {
    var parts = {};
    dayFormat.formatToParts(new Date(text)).forEach(function (part) { parts[part.type] = part.value; });
    return parts.year + "-" + parts.month + "-" + parts.day;
  }
  function bucketLabel(answer, start) {
    return answer.granularity === "hour" ? start.slice(5, 10) + " " + start.slice(11, 16) : localDay(start);
  }

  function stacks(answer, series) {
    return answer.buckets.map(function (bucket) {
      var parts = new Array(SERIES + 1).fill(0);
      bucket.groups.forEach(function (g) { parts[seriesIndex(series, g[answer.by])] += g.cost_usd; });
      return parts;
    });
  }

  function chart(answer, series, title, width) {
    // As wide as its box (so its text is the page's size on a phone too), within reason.
    var W = Math.max(320, Math.min(960, Math.round(width) || 720)), H = 260, left = 78, right = 8, top = 10;
    var bottom = 30;
    var bars = stacks(answer, series);
    var peak = Math.max.apply(null, bars.map(function (p) { return p.reduce(function (a, b) { return a + b; }, 0); }));
    var total = answer.totals.reduce(function (a, g) { return a + g.cost_usd; }, 0);
    var desc = "Total " + usd(total) + " over " + answer.buckets.length + " " + answer.granularity + "s" +
      (answer.totals.length ? "; most: " + label(answer.totals[0][answer.by]) + " " + usd(answer.totals[0].cost_usd)
        : "; no calls") + ". The table below the chart has every figure.";
    var parts = [svg("title", { id: "chart-title" }, [title]), svg("desc", { id: "chart-desc" }, [desc]),
      svg("line", { class: "axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom })];
    var plotH = H - top - bottom, step = (W - left - right) / Math.max(bars.length, 1);
    [0, 0.5, 1].forEach(function (f) {
      var y = H - bottom - f * plotH;
      parts.push(svg("line", { class: "axis", x1: left, x2: W - right, y1: y, y2: y }));
      parts.push(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, [usd(peak * f)]));
    });
    bars.forEach(function (part, i) {
      var y = H - bottom, start = answer.buckets[i].start;
      part.forEach(function (cost, s) {
        if (!(cost > 0) || !(peak > 0)) return;
        var h = cost / peak * plotH;
        y -= h;
        var name = s >= SERIES ? "other" : label(series.shown[s]);
        parts.push(svg("rect", { class: seriesClass(s), x: (left + i * step + step * 0.1).toFixed(2),
          y: y.toFixed(2), width: Math.max(step * 0.8, 0.5).toFixed(2), height: h.toFixed(2) },
        [svg("title", {}, [bucketLabel(answer, start) + " · " + name + ": " + usd(cost)])]));
      });
    });
    var ticks = bars.length > 2 ? [0, Math.floor((bars.length - 1) / 2), bars.length - 1] : bars.map(function (_, i) {
      return i;
    });
    ticks.forEach(function (i, n) {
      var anchor = ticks.length > 1 && n === ticks.length - 1 ? "end" : n === 0 ? "start" : "middle";
      parts.push(svg("text", { x: left + i * step + (anchor === "end" ? step : anchor === "start" ? 0 : step / 2),
        y: H - 10, "text-anchor": anchor }, [bucketLabel(answer, answer.buckets[i].start)]));
    });
    return svg("svg", { class: "plot", viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-labelledby": "chart-title chart-desc" }, parts);
  }

  function swatch(index) {
    return el("span", { class: "swatch", "aria-hidden": "true" }, [svg("svg", { viewBox: "0 0 10 10",
      width: 12, height: 12 }, [svg("rect", { class: seriesClass(index), width: 10, height: 10 })])]);
  }

  function totalsTable(answer, series, title) {
    var rows = answer.totals.map(function (g) {
      var key = g[answer.by];
      return el("tr", { "data-group": label(key) }, [
        el("th", { scope: "row" }, [swatch(seriesIndex(series, key)), " ", label(key)]),
        money(g.cost_usd, { "data-field": "cost_usd" }), number(g.calls, { "data-field": "calls" }),
        number(g.tokens.input_tokens, { "data-field": "input_tokens" }),
        number(g.tokens.output_tokens, { "data-field": "output_tokens" }),
        number(g.unpriced_calls, { "data-field": "unpriced_calls" })]);
    });
    return table(title, [GROUP_NAMES[answer.by] || answer.by, "#Spend", "#Calls", "#Input tokens", "#Output tokens",
      "#Unpriced calls"], rows, { id: "totals-table", "data-range": answer.range, "data-by": answer.by });
  }

  function bucketTable(answer, series, title) {
    var names = series.shown.map(label).concat(series.other ? ["other"] : []);
    var rows = stacks(answer, series).map(function (part, i) {
      var cells = part.slice(0, names.length).map(function (cost) { return money(cost); });
      if (series.other) cells[names.length - 1] = money(part[SERIES]);
      var sum = part.reduce(function (a, b) { return a + b; }, 0);
      return el("tr", {}, [el("th", { scope: "row" }, [bucketLabel(answer, answer.buckets[i].start)])]
        .concat(cells, [money(sum)]));
    });
    var first = answer.granularity === "hour" ? "Hour (UTC)" : "Day";
    return table(title, [first].concat(names.map(function (n) { return "#" + n; }), ["#Total"]), rows);
  }

  function drawAnalytics(answer) {
    var series = seriesOf(answer);
    var title = "Spend per " + answer.granularity + ", " + (RANGE_NAMES[answer.range] || answer.range).toLowerCase() +
      ", by " + (GROUP_NAMES[answer.by] || answer.by).toLowerCase();
    var box = document.getElementById("chart");
    fill("chart", answer.totals.length ? [chart(answer, series, title, box.clientWidth)]
      : [nothing("No calls in this range.")]);
    fill("chart-caption", [title + (answer.granularity === "hour" ? " (hours in UTC)" : " (days in " +
      data.timezone + ")")]);
    fill("chart-totals", [totalsTable(answer, series, title + ": totals")]);
    fill("chart-table", [bucketTable(answer, series, title)]);
  }

  function granularity(range) { return range.slice(-1) === "h" ? "hour" : "day"; }

  function show(range, by) {
    var key = range + "|" + by;
    if (analyticsCache[key]) {
      fill("chart-status", []);
      drawAnalytics(analyticsCache[key]);
      return;
    }
    if (!data.served) {
      fill("chart-status", ["This file has no data for that choice; spendwatch serve shows any range."]);
      return;
    }
    fill("chart-status", ["Loading…"]);
    var url = "api/v1/analytics?range=" + encodeURIComponent(range) + "&granularity=" + granularity(range) +
      "&by=" + encodeURIComponent(by);
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) throw new Error(body.error ? body.error.message : "HTTP " + response.status);
        return body;
      });
    }).then(function (answer) {
      analyticsCache[key] = answer;
      if (currentKey() === key) show(range, by);
    }).catch(function (error) {
      fill("chart-status", ["Could not load that view: " + error.message]);
    });
  }

  function currentKey() {
    return document.getElementById("range").value + "|" + document.getElementById("group").value;
  }

  function drawControls() {
    var range = document.getElementById("range"), group = document.getElementById("group");
    var ranges = data.controls.ranges, groups = data.controls.groups;
    fill("range", ranges.map(function (r) { return el("option", { value: r }, [RANGE_NAMES[r] || r]); }));
    fill("group", groups.map(function (g) { return el("option", { value: g }, [GROUP_NAMES[g] || g]); }));
    function changed() { show(range.value, group.value); }
    range.addEventListener("change", changed);
    group.addEventListener("change", changed);
    var drawnWidth = document.getElementById("chart").clientWidth;
    window.addEventListener("resize", function () {
      var width = document.getElementById("chart").clientWidth;
      if (width !== drawnWidth && analyticsCache[currentKey()]) {
        drawnWidth = width;
        drawAnalytics(analyticsCache[currentKey()]);
      }
    });
    changed();
  }

  // --- tables of the last days ----------------------------------------------------------------------------------

  function drawDocuments(documents) {
    var rows = documents.map(function (d) {
      return el("tr", { "data-group": label(d.document) }, [el("th", { scope: "row" }, [label(d.document)]),
        money(d.cost_usd, { "data-field": "cost_usd" }), number(d.requests, { "data-field": "requests" }),
        number(d.unpriced, { "data-field": "unpriced" })]);
    });
    fill("top-documents", rows.length ? [table("Costliest documents, last " + data.summary_days + " days",
      ["Document", "#Spend", "#LLM calls", "#Unpriced"], rows, { id: "documents-table" })]
      : [nothing("No LightRAG document calls in these days.")]);
  }

  function loadDocuments() {
    // A served page asks its own API for them: they are summed from the calls, which can take a while.
    fill("top-documents", [nothing("Loading…")]);
    var url = "api/v1/report?by=document&format=json&start=" + data.window.start + "&end=" + data.window.end;
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (report) {
      drawDocuments(report.rows.slice(0, 10));
    }).catch(function (error) {
      fill("top-documents", [nothing("Could not load the top documents: " + error.message)]);
    });
  }

  function drawTops() {
    var categories = data.top_categories.map(function (g) {
      return el("tr", { "data-group": label(g.category) }, [el("th", { scope: "row" }, [label(g.category)]),
        money(g.cost_usd, { "data-field": "cost_usd" }), number(g.calls, { "data-field": "calls" }),
        number(g.unpriced_calls, { "data-field": "unpriced_calls" })]);
    });
    fill("top-categories", categories.length ? [table("Costliest categories, last " + data.summary_days + " days",
      ["Category", "#Spend", "#Calls", "#Unpriced"], categories, { id: "categories-table" })]
      : [nothing("No calls in these days.")]);
    if (data.top_documents) drawDocuments(data.top_documents); else loadDocuments();
  }

  function drawUnpriced() {
    var rows = data.unpriced_by_model.map(function (g) {
      return el("tr", { "data-group": label(g.model) }, [el("th", { scope: "row" }, [label(g.model)]),
        number(g.unpriced_calls, { "data-field": "unpriced_calls" }), number(g.calls, { "data-field": "calls" })]);
    });
    fill("unpriced", rows.length ? [
      el("p", {}, ["These calls have no price in the price data, so their cost is not in any spend above. " +
        "Give their price in the SPENDWATCH_PRICES_FILE."]),
      el("div", { class: "scroll", tabindex: 0, role: "region", "aria-label": "Unpriced calls by model" },
        [table("Unpriced calls by model, last " + data.summary_days + " days", ["Model", "#Unpriced calls",
          "#All calls"], rows, { id: "unpriced-table" })])]
      : [nothing("Every call of the last " + data.summary_days + " days was priced.")]);
  }

  function alertText(a) {
    if (a.kind === "threshold_crossed") {
      return a.period + " budget reached " + a.level + " (" + percent(a.threshold_ratio) + " of " +
        usd(a.limit_usd) + "): " + usd(a.spent_usd) + " spent";
    }
    if (a.kind === "guard_refused" || a.kind === "guard_degraded") {
      return count(a.calls) + " call" + (a.calls === 1 ? "" : "s") + " (" + a.action + ") to " + a.provider + " " +
        a.model + ", " + when(a.first_at) + " to " + when(a.last_at);
    }
    if (a.kind === "ledger_unavailable") {
      return count(a.errors) + " failed writes from " + when(a.since) + " to " + when(a.until) + ": " + a.error;
    }
    return a.kind;
  }

  function drawAlerts() {
    var events = data.alerts;
    var rows = events.slice(0, MAX_ALERT_ROWS).map(function (a) {
      return el("tr", { "data-kind": a.kind, "data-calls": a.calls }, [el("td", {}, [when(a.at)]),
        el("td", {}, [KIND_NAMES[a.kind] || a.kind]), el("td", {}, [a.budget || ""]), el("td", {}, [alertText(a)])]);
    });
    var more = events.length > MAX_ALERT_ROWS ? el("p", { class: "muted" }, [count(events.length - MAX_ALERT_ROWS) +
      " older events are not shown; /api/v1/alerts lists them all."]) : null;
    fill("alerts", rows.length ? [table("Threshold crossings, guard refusals and degradations, ledger outages, last " +
      data.summary_days + " days, newest first", ["When", "What", "Budget", "Detail"], rows, { id: "alerts-table" }),
    more].filter(Boolean) : [nothing("Nothing happened in the last " + data.summary_days + " days.")]);
  }

  drawHeader();
  drawBudgets();
  drawControls();
  drawTops();
  drawUnpriced();
  drawAlerts();
})();
