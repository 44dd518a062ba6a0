"""``spendwatch doctor``: check what users most often get wrong, each with a one-line fix.

Usage::

    from spendwatch.cli.doctor import run_checks

    for check in run_checks():
        print(check.status, check.name, check.summary, check.fix or "")

Each check is a small function over a :class:`DoctorContext` (the settings, the ledger opened once, the clock) that
returns one :class:`CheckResult` with status ``ok``, ``warn`` or ``fail``. Doctor never changes anything: a SQLite
ledger that does not exist yet is not created, and the write test runs in a transaction that is rolled back.
Its output names no secret: no API key, no metrics password, no password in a PostgreSQL URL.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from pathlib import Path
from typing import Any

from spendwatch.exporter.ledger import shown_location
from spendwatch.exporter.mapping import printable
from spendwatch.instrumentation.errors import ConfigError
from spendwatch.runtime import DISABLED_ENV, instrumentation_disabled

__all__ = [
    "CHECKS",
    "FAIL",
    "OK",
    "WARN",
    "CheckResult",
    "DoctorContext",
    "check_instrumentor",
    "counts",
    "iter_text",
    "printable",
    "run_checks",
    "shown_location",
]

OK, WARN, FAIL = "ok", "warn", "fail"

INSTRUMENTOR_GROUP = "opentelemetry_instrumentor"
POST_INSTRUMENT_GROUP = "opentelemetry_post_instrument"
PRICE_DATA_MAX_AGE_DAYS = 180
CLOCK_SKEW_LIMIT_S = 300.0
HTTP_TIMEOUT_S = 3.0
_MAX_LISTED = 5
# Other instrumentations of the openai SDK: with one of them active too, every call gets two spans.
OTHER_OPENAI_INSTRUMENTATIONS = {
    "opentelemetry-instrumentation-openai-v2": "OpenTelemetry contrib's openai-v2",
    "opentelemetry-instrumentation-openai": "OpenLLMetry (traceloop)",
    "openinference-instrumentation-openai": "OpenInference",
    "openlit": "OpenLIT",
}
# And of boto3's Bedrock Runtime calls (botocore's adds a span to every AWS call, with GenAI usage on Bedrock's).
OTHER_BEDROCK_INSTRUMENTATIONS = {
    "opentelemetry-instrumentation-botocore": "OpenTelemetry contrib's botocore, with its Bedrock extension",
    "opentelemetry-instrumentation-bedrock": "OpenLLMetry (traceloop)",
    "openinference-instrumentation-bedrock": "OpenInference",
    "openlit": "OpenLIT",
}
# And of the anthropic SDK (besides the span the SDK makes itself, which spendwatch's span contains: see the README).
OTHER_ANTHROPIC_INSTRUMENTATIONS = {
    "opentelemetry-instrumentation-anthropic": "OpenLLMetry (traceloop)",
    "openinference-instrumentation-anthropic": "OpenInference",
    "openlit": "OpenLIT",
}
# And of google-genai (OpenLLMetry's google-generativeai instrumentation covers google-genai too).
OTHER_GOOGLE_GENAI_INSTRUMENTATIONS = {
    "opentelemetry-instrumentation-google-genai": "OpenTelemetry contrib's google-genai",
    "opentelemetry-instrumentation-google-generativeai": "OpenLLMetry (traceloop)",
    "openinference-instrumentation-google-genai": "OpenInference",
    "openlit": "OpenLIT",
}
_OTHER_INSTRUMENTATIONS = (
    ("OpenAI", OTHER_OPENAI_INSTRUMENTATIONS),
    ("Bedrock", OTHER_BEDROCK_INSTRUMENTATIONS),
    ("Anthropic", OTHER_ANTHROPIC_INSTRUMENTATIONS),
    ("Google Gen AI", OTHER_GOOGLE_GENAI_INSTRUMENTATIONS),
)
_LOOPBACK_FOR_WILDCARD = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: ``status`` is ok, warn or fail; ``fix`` says in one line what to do about it."""

    name: str
    status: str
    summary: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DoctorContext:
    """What the checks share, gathered once: the settings (or why they do not load) and the ledger, if any."""

    environ: Mapping[str, str]
    now: float
    settings: Any = None
    settings_error: str | None = None
    ledger: Any = None
    ledger_error: str | None = None

    @classmethod
    def gather(cls, environ: Mapping[str, str] = os.environ, now: float | None = None) -> DoctorContext:
        from spendwatch.exporter.settings import load_settings

        context = cls(environ, time.time() if now is None else now)
        try:
            context.settings = load_settings(environ=environ)
        except ConfigError as error:
            context.settings_error = str(error)
            return context
        if context.settings.is_postgres or Path(context.settings.ledger).exists():
            context.ledger, context.ledger_error = _open_ledger(context.settings)
        return context

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None


def run_checks(environ: Mapping[str, str] = os.environ, now: float | None = None) -> list[CheckResult]:
    """Every check in :data:`CHECKS`, in order; a check that crashes is reported as failed, not raised."""
    context = DoctorContext.gather(environ, now)
    try:
        return [_run_one(check, context) for check in CHECKS]
    finally:
        context.close()


def _run_one(check: Callable[[DoctorContext], CheckResult], context: DoctorContext) -> CheckResult:
    try:
        return check(context)
    except Exception as error:  # noqa: BLE001 - one broken check must not hide the others
        name = check.__name__.removeprefix("check_")
        return CheckResult(name, FAIL, f"the check itself failed: {type(error).__name__}: {printable(str(error))}")


# --- configuration and instrumentation -----------------------------------------------------------------------------


def check_configuration(context: DoctorContext) -> CheckResult:
    if context.settings is None:
        return CheckResult("configuration", FAIL, context.settings_error or "", "correct the setting named above")
    path = context.settings.config_path
    source = f"the environment and SPENDWATCH_CONFIG={path!r}" if path else "the environment and defaults"
    return CheckResult("configuration", OK, f"settings load from {source}")


def _instrumentor_check(name: str, library: str, optional: bool) -> Callable[[DoctorContext], CheckResult]:
    def check(context: DoctorContext) -> CheckResult:
        return check_instrumentor(context, name, library, optional=optional)

    check.__name__ = f"check_{name}"
    return check


def check_instrumentor(context: DoctorContext, name: str, library: str, *, optional: bool = False) -> CheckResult:
    """The entry point ``name`` resolves, and the library it instruments is installed in a supported version."""
    from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

    found = [point for point in entry_points(group=INSTRUMENTOR_GROUP) if point.name == name]
    if not found:
        fix = "pip install spendwatch into the environment (virtualenv) the app runs in"
        return CheckResult(name, FAIL, f"no {INSTRUMENTOR_GROUP} entry point named {name}: nothing is patched", fix)
    try:
        requirements = tuple(found[0].load()().instrumentation_dependencies())
    except Exception as error:  # noqa: BLE001 - whatever breaks the import breaks opentelemetry-instrument too
        reason = f"{type(error).__name__}: {printable(str(error))}"
        return CheckResult(
            name, FAIL, f"entry point {found[0].value} cannot be loaded ({reason})", "reinstall spendwatch"
        )
    needs = ", ".join(requirements)
    conflict = get_dependency_conflicts(requirements)
    if conflict is not None and conflict.found:
        summary = f"{conflict.found} is installed but {name} needs {needs}: its calls are not instrumented"
        return CheckResult(name, FAIL, summary, f"pip install '{needs}'")
    if conflict is not None:
        if optional:
            return CheckResult(name, OK, f"{library} is not installed (optional; {name} stays idle)")
        return CheckResult(
            name, WARN, f"{library} is not installed: there is nothing to instrument", f"pip install '{needs}'"
        )
    if instrumentation_disabled(name, context.environ):
        fix = f"remove {name} from {DISABLED_ENV} unless you mean it"
        return CheckResult(name, WARN, f"disabled by {DISABLED_ENV}: {library} calls are not counted", fix)
    return CheckResult(name, OK, f"active for {library} {_version(library)} (needs {needs})")


def _version(name: str) -> str:
    try:
        return distribution(name).version
    except PackageNotFoundError:
        return "?"


def check_exporter_hook(context: DoctorContext) -> CheckResult:
    """Under ``opentelemetry-instrument`` the ledger is attached by a post-instrument entry point."""
    found = [point for point in entry_points(group=POST_INSTRUMENT_GROUP) if point.name == "spendwatch_exporter"]
    if not found:
        summary = (
            "no spendwatch_exporter post-instrument hook: opentelemetry-instrument makes spans but fills no ledger"
        )
        return CheckResult("exporter_hook", FAIL, summary, "reinstall spendwatch, or call spendwatch.configure()")
    return CheckResult("exporter_hook", OK, "opentelemetry-instrument attaches the ledger and /metrics")


def _other_instrumentation(dist_name: str, environ) -> tuple | None:
    """An installed distribution and its instrumentor entry points, unless the user disabled them all; else None."""
    try:
        dist = distribution(dist_name)
    except PackageNotFoundError:
        return None
    points = [point.name for point in dist.entry_points if point.group == INSTRUMENTOR_GROUP]
    if points and all(instrumentation_disabled(point, environ) for point in points):
        return None
    return dist, points


def check_other_instrumentations(context: DoctorContext) -> CheckResult:
    """Another instrumentation of an SDK we instrument, active beside ours, doubles its spans and gen_ai metrics."""
    active: dict[str, str] = {}
    names, sdks = [], []
    for sdk, others in _OTHER_INSTRUMENTATIONS:
        for dist_name, known_as in others.items():
            found = _other_instrumentation(dist_name, context.environ)
            if found is None:
                continue
            if sdk not in sdks:
                sdks.append(sdk)
            if dist_name not in active:
                active[dist_name] = f"{dist_name} {found[0].version} ({known_as})"
                names += found[1]
    if not active:
        summary = "no other OpenAI, Bedrock, Anthropic or Google Gen AI instrumentation"
        return CheckResult("other_instrumentations", OK, summary)
    summary = f"also installed: {'; '.join(active.values())}: {' and '.join(sdks)} calls may get two spans each"
    fix = "pip uninstall it" + (f", or set {DISABLED_ENV}={','.join(sorted(set(names)))}" if names else "")
    return CheckResult("other_instrumentations", WARN, summary, fix)


# --- the user's OpenTelemetry set-up -------------------------------------------------------------------------------
# spendwatch counts without it (the ledger, budgets, guard and /metrics), but the spans need the SDK, a configurator
# (opentelemetry-distro's) to set it up under opentelemetry-instrument, and every exporter the environment names.

CONFIGURATOR_GROUP = "opentelemetry_configurator"
_SIGNALS = ("traces", "metrics", "logs")
# The packages that provide the exporters users name most, by entry point name (the SDK's names for "otlp").
_EXPORTER_PACKAGES = {
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
    "prometheus": "opentelemetry-exporter-prometheus",
}
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_OTLP_PROTOCOL_ENV = "OTEL_EXPORTER_OTLP_PROTOCOL"


def check_opentelemetry_sdk(context: DoctorContext) -> CheckResult:
    """Without the SDK no span is recorded; without a configurator opentelemetry-instrument sets up no exporter."""
    if _installed_version("opentelemetry-sdk") is None:
        summary = "opentelemetry-sdk is not installed: spend is counted, but no span is recorded"
        fix = "pip install opentelemetry-distro opentelemetry-exporter-otlp"
        return CheckResult("opentelemetry_sdk", WARN, summary, fix)
    configurators = sorted({_provider(point) for point in entry_points(group=CONFIGURATOR_GROUP)})
    if not configurators:
        summary = (
            "no OpenTelemetry configurator is installed: opentelemetry-instrument sets up no exporter, so spans go "
            "nowhere unless the app configures the SDK itself"
        )
        return CheckResult("opentelemetry_sdk", WARN, summary, "pip install opentelemetry-distro")
    summary = f"opentelemetry-sdk {_version('opentelemetry-sdk')}, set up by {', '.join(configurators)}"
    return CheckResult("opentelemetry_sdk", OK, summary)


def check_opentelemetry_exporters(context: DoctorContext) -> CheckResult:
    """An exporter named in OTEL_*_EXPORTER (or the distro's default, otlp) that is not installed makes
    OpenTelemetry's whole start-up fail: no span or metric reaches any backend. A warning: spendwatch counts on."""
    if not list(entry_points(group=CONFIGURATOR_GROUP)):
        return CheckResult("opentelemetry_exporters", OK, "not checked: no configurator reads OTEL_*_EXPORTER")
    named, missing = [], []
    for signal in _SIGNALS:
        for shown, entry_point in _named_exporters(signal, context.environ):
            named.append(f"OTEL_{signal.upper()}_EXPORTER{shown}")
            if not list(entry_points(group=f"opentelemetry_{signal}_exporter", name=entry_point)):
                missing.append((signal, shown, entry_point))
    if missing:
        needs: dict[tuple[str, str], list[str]] = {}
        for signal, shown, point in missing:
            needs.setdefault((shown, point), []).append(f"OTEL_{signal.upper()}_EXPORTER")
        listed = "; ".join(f"{', '.join(names)}{shown} needs {point}" for (shown, point), names in needs.items())
        summary = f"not installed: {listed}: OpenTelemetry's start-up fails, nothing is exported (spend is counted)"
        packages = sorted({_EXPORTER_PACKAGES.get(point, f"the package providing {point}") for _, _, point in missing})
        unset = " ".join(sorted({f"OTEL_{signal.upper()}_EXPORTER=none" for signal, _, _ in missing}))
        fix = f"pip install {' '.join(packages)}, or export nothing: {unset}"
        return CheckResult("opentelemetry_exporters", WARN, summary, fix)
    if not named:
        return CheckResult("opentelemetry_exporters", OK, "none named (OTEL_*_EXPORTER unset or none)")
    return CheckResult("opentelemetry_exporters", OK, "installed: " + ", ".join(named))


def _named_exporters(signal: str, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(as the user wrote it, entry point name) for each exporter OpenTelemetry will load for ``signal``; the distro
    makes ``otlp`` the default, as opentelemetry-instrument runs it."""
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    value = environ.get(variable)
    shown = f"={value}"
    if value is None and _distro_is_used(environ):
        value, shown = "otlp", "=otlp (the distro's default)"
    if not value or value.strip().lower() == "none":
        return []
    protocol = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or environ.get(_OTLP_PROTOCOL_ENV)
    otlp = _OTLP_BY_PROTOCOL.get((protocol or "grpc").strip(), "otlp")
    names = [name.strip() for name in value.split(",") if name.strip()]
    return [(shown, otlp if name == "otlp" else name) for name in names]


def _distro_is_used(environ: Mapping[str, str]) -> bool:
    chosen = environ.get("OTEL_PYTHON_DISTRO")
    return _installed_version("opentelemetry-distro") is not None and chosen in (None, "distro")


def _provider(point) -> str:
    dist = getattr(point, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else point.value


def _installed_version(name: str) -> str | None:
    try:
        return distribution(name).version
    except PackageNotFoundError:
        return None


# --- ledger, prices, unpriced models -------------------------------------------------------------------------------


def _open_ledger(settings) -> tuple[Any, str | None]:
    from spendwatch.exporter import open_ledger

    try:
        ledger = open_ledger(settings)
    except ConfigError as error:
        return None, str(error)
    ledger.set_busy_timeout(3.0)  # doctor waits 3 s for a busy writer, not 30
    return ledger, None


def check_ledger(context: DoctorContext) -> CheckResult:
    if context.settings is None:
        return _not_checked("ledger")
    from spendwatch.exporter import journal_directory
    from spendwatch.exporter.sink import journal_directories

    settings = context.settings
    where = shown_location(settings.ledger)
    if context.ledger_error:
        fix = "bring the ledger back (an app's calls wait in its journal), or point SPENDWATCH_LEDGER elsewhere"
        return CheckResult("ledger", FAIL, context.ledger_error, fix)
    journal = journal_directory(settings.ledger)
    if not _can_create(journal):
        state_home = context.environ.get("XDG_STATE_HOME")
        return _journal_elsewhere(journal, journal_directories(settings.ledger, state_home, context.environ))
    if context.ledger is None:
        if not _can_create(Path(settings.ledger)):
            summary = f"no ledger at {where}, and it cannot be created there"
            return CheckResult("ledger", FAIL, summary, "point SPENDWATCH_LEDGER at a writable path")
        summary = f"no ledger at {where} yet: no instrumented call has run with this SPENDWATCH_LEDGER"
        return CheckResult("ledger", WARN, summary, "run the app, or give doctor the app's SPENDWATCH_LEDGER")
    problem = context.ledger.write_problem()
    if problem:
        summary = f"{where} opens but cannot be written: {printable(problem)}"
        return CheckResult("ledger", FAIL, summary, "check its permissions")
    return CheckResult("ledger", OK, f"{where} opens and takes writes ({context.ledger.call_count()} calls recorded)")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _journal_elsewhere(journal: Path, chain: list[Path]) -> CheckResult:
    """The ledger check when a journal cannot be written beside the ledger: calls go to the next place that takes
    them, or wait in memory (and are dropped past SPENDWATCH_JOURNAL_MEMORY_RECORDS) when none does."""
    fix = f"make {_existing_ancestor(journal)} writable by the app's user"
    writable = [place for place in chain if _can_create(place)]
    if writable:
        return CheckResult("ledger", WARN, f"{journal} is not writable: calls are journaled in {writable[0]}", fix)
    summary = (
        f"no journal directory can be written ({', '.join(map(str, chain))}): calls wait in memory and are dropped "
        "past SPENDWATCH_JOURNAL_MEMORY_RECORDS"
    )
    return CheckResult("ledger", FAIL, summary, fix)


def _can_create(path: Path) -> bool:
    """``path`` exists and is writable, or its nearest existing ancestor lets us create it."""
    if path.exists():
        return os.access(path, os.W_OK)
    ancestor = _existing_ancestor(path)
    return ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK)


def check_journal(context: DoctorContext) -> CheckResult:
    """Calls journaled but not in the ledger yet: while an app cannot write its ledger, they wait there."""
    if context.settings is None:
        return _not_checked("journal")
    from spendwatch.exporter.sink import journal_directories, waiting_records

    directories = journal_directories(context.settings.ledger)
    waiting = waiting_records(directories)
    where = " and ".join(str(directory) for directory in directories if directory.is_dir())
    if waiting == 0:
        return CheckResult("journal", OK, "no call waits in the journal")
    if context.ledger is not None and context.ledger_error is None:
        return CheckResult("journal", OK, f"{waiting} calls in the journal ({where}), on their way to the ledger")
    summary = f"{waiting} calls wait in the journal ({where}) because the ledger cannot be written"
    fix = "bring the ledger back (see the ledger check): a running app drains them then, else the next one to start"
    return CheckResult("journal", WARN, summary, fix)


def check_leases(context: DoctorContext) -> CheckResult:
    """Guard leases past their TTL, kept (counted against their budgets) until their owner's journal is in."""
    if context.ledger is None or context.ledger_error is not None:
        return _not_checked("leases", "the ledger cannot be opened")
    from spendwatch.exporter.ledger.leases import held_leases
    from spendwatch.exporter.recovery import owner_states
    from spendwatch.exporter.sink import journal_directories

    expired = [lease for lease in held_leases(context.ledger) if lease.expired]
    states = owner_states(expired, journal_directories(context.settings.ledger))
    # A live owner, or one whose journal is in, releases within seconds: only a journal not replayed yet is news.
    held = [lease for lease, state in zip(expired, states, strict=True) if state in ("waiting", "other host")]
    if not held:
        return CheckResult("leases", OK, "no lease past its TTL waits for its owner's journal")
    usd = sum(lease.outstanding_usd for lease in held)
    hosts = sorted({lease.owner.rsplit(":", 2)[0] for lease in held})
    summary = f"{len(held)} leases past their TTL hold ${usd:.6f} of budget until their owners' journals are in"
    fix = (
        f"run an app or `spendwatch serve` on {', '.join(hosts) or 'this host'} to replay them; if a host is gone "
        "with its journal, `spendwatch leases list` and `spendwatch leases release LEASE_ID`"
    )
    return CheckResult("leases", WARN, summary, fix)


def check_quarantine(context: DoctorContext) -> CheckResult:
    """Records the ledger refused by value, set aside so they block nothing: in no total until replayed."""
    if context.settings is None:
        return _not_checked("quarantine")
    from spendwatch.exporter.quarantine import directories_of, quarantined

    items = quarantined(directories_of(context.settings.ledger))
    if not items:
        return CheckResult("quarantine", OK, "no record is in quarantine")
    where = " and ".join(sorted({str(item.path) for item in items}))
    summary = f"{len(items)} records the ledger refused wait in quarantine ({where}), counted in no budget"
    fix = "see why with `spendwatch quarantine list`, fix the cause, then `spendwatch quarantine replay`"
    return CheckResult("quarantine", WARN, summary, fix)


def check_price_data(context: DoctorContext) -> CheckResult:
    from spendwatch.instrumentation.pricing import PriceTable

    table = PriceTable()
    try:
        stamp = table.data_timestamp
    except (RuntimeError, OSError):
        return CheckResult(
            "price_data", FAIL, "genai-prices is not installed: no call can be priced", "pip install genai-prices"
        )
    age_days = max(0.0, (context.now - stamp) / 86400)
    written = datetime.fromtimestamp(stamp, UTC).date().isoformat()
    summary = f"{table.data_version}, data written {written} ({age_days:.0f} days ago)"
    if age_days > PRICE_DATA_MAX_AGE_DAYS:
        fix = "pip install -U genai-prices (new models are unpriced and price changes are missed until then)"
        return CheckResult("price_data", WARN, f"{summary}: older than {PRICE_DATA_MAX_AGE_DAYS} days", fix)
    return CheckResult("price_data", OK, summary)


def check_price_overrides(context: DoctorContext) -> CheckResult:
    if context.settings is None:
        return _not_checked("price_overrides")
    from spendwatch.instrumentation.pricing import load_overrides

    path = context.settings.prices_file
    if not path:
        return CheckResult("price_overrides", OK, "none (SPENDWATCH_PRICES_FILE is not set)")
    try:
        overrides = load_overrides(path, context.settings.prices_file_label)
    except ConfigError as error:
        return CheckResult("price_overrides", FAIL, str(error), "correct the file; the app refuses to start with it")
    return CheckResult("price_overrides", OK, f"{len(overrides)} model prices from {path}")


def check_unpriced_models(context: DoctorContext) -> CheckResult:
    if context.ledger is None:
        return _not_checked("unpriced_models", "no ledger to read", OK)
    from spendwatch.instrumentation.pricing import PriceTable

    try:
        table = context.settings.price_table()
    except ConfigError:  # reported by price_overrides; judge by the bundled prices alone
        table = PriceTable()
    unpriced: dict[tuple[str, str], int] = {}
    for row in context.ledger.totals():
        if row["unpriced"]:
            key = (str(row["provider"]), str(row["model"]))
            unpriced[key] = unpriced.get(key, 0) + int(row["unpriced"])
    still = {key: calls for key, calls in unpriced.items() if table.lookup(key[1], provider=key[0]) is None}
    if not still:
        note = f" ({len(unpriced)} seen unpriced are priced now)" if unpriced else ""
        return CheckResult("unpriced_models", OK, "every model in the ledger has a price" + note)
    listed = sorted(still.items(), key=lambda item: -item[1])
    shown = ", ".join(
        f"{printable(model, 60)} ({calls} call{'s' if calls != 1 else ''})"
        for (_, model), calls in listed[:_MAX_LISTED]
    )
    more = f" and {len(listed) - _MAX_LISTED} more" if len(listed) > _MAX_LISTED else ""
    fix = 'add [models."NAME"] with input_per_mtok and output_per_mtok to SPENDWATCH_PRICES_FILE'
    local_host = _local_openai_host(context.environ)
    if local_host is not None and any(provider == "openai" for provider, _ in still):
        fix = (
            f"OPENAI_BASE_URL is a local or private server ({printable(local_host, 60)}): if it serves its own models"
            ' for free, make them free with [models."NAME"] input_per_mtok = 0 and output_per_mtok = 0 in'
            " SPENDWATCH_PRICES_FILE; else " + fix
        )
    return CheckResult("unpriced_models", WARN, f"calls to models without a price: {shown}{more}", fix)


_LOCAL_NAME_SUFFIXES = (".localhost", ".local", ".internal", ".lan")


def _local_openai_host(environ: Mapping[str, str]) -> str | None:
    """The host of ``OPENAI_BASE_URL`` (the OpenAI SDK's default base URL) when it is a loopback or private server:
    a literal loopback, private or link-local address, ``localhost``, a local-only domain, or a single-label name
    (a container's service name, say). Judged from the name alone: doctor resolves no host for this."""
    try:
        host = urllib.parse.urlsplit(environ.get("OPENAI_BASE_URL", "").strip()).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        local = host == "localhost" or host.endswith(_LOCAL_NAME_SUFFIXES) or "." not in host
        return host if local else None
    return host if address.is_loopback or address.is_private or address.is_link_local else None


# --- /metrics, budgets, clock ---------------------------------------------------------------------------------------


def check_metrics_endpoint(context: DoctorContext) -> CheckResult:
    if context.settings is None:
        return _not_checked("metrics_endpoint")
    settings = context.settings
    if settings.metrics_address is None:
        return CheckResult("metrics_endpoint", OK, "off (SPENDWATCH_METRICS_ADDRESS=off)")
    host, port = settings.metrics_address
    target = _LOOPBACK_FOR_WILDCARD.get(host, host)
    scheme = "https" if settings.metrics_tls_certfile else "http"
    url = f"{scheme}://{f'[{target}]' if ':' in target else target}:{port}/metrics"
    status, body, problem = _get(url, settings.metrics_basic_auth, settings.metrics_tls_certfile)
    if problem is not None:
        fix = "start the app (it serves /metrics while it runs) or `spendwatch serve`"
        return CheckResult("metrics_endpoint", WARN, f"nothing answers at {url}: {problem}", fix)
    if status == 401:
        why = "refuses the configured credentials" if settings.metrics_basic_auth else "asks for credentials"
        fix = "give doctor the same SPENDWATCH_METRICS_BASIC_AUTH as the server"
        return CheckResult("metrics_endpoint", FAIL, f"{url} {why} (HTTP 401)", fix)
    if status != 200 or b"llm_cost_usd_total" not in body:
        summary = f"{url} answers HTTP {status}, but not with spendwatch's metrics: another program holds the port"
        return CheckResult("metrics_endpoint", WARN, summary, "set SPENDWATCH_METRICS_ADDRESS to a free host:port")
    from spendwatch.exporter.metrics_endpoint import identify_holder

    holder = identify_holder(url, settings)  # its answers name the ledger it shows and the process serving it
    if holder.kind == "other ledger":
        where = shown_location(settings.ledger)
        summary = f"{url} is served by {holder.describe()}: the calls in {where} are not there"
        fix = "give each ledger its own SPENDWATCH_METRICS_ADDRESS (or give doctor the app's SPENDWATCH_LEDGER)"
        return CheckResult("metrics_endpoint", WARN, summary, fix)
    if not _is_loopback(host) and settings.metrics_basic_auth is None:
        summary = f"{url} serves spend to anyone who can reach {host}:{port}, without credentials"
        return CheckResult("metrics_endpoint", WARN, summary, "set SPENDWATCH_METRICS_BASIC_AUTH=user:password")
    differs = _budgets_differ(context, body)
    if differs is not None:
        summary = f"{url} serves spendwatch's metrics, but not with our budgets: {differs}"
        fix = "give doctor the app's environment, or the app its own SPENDWATCH_METRICS_ADDRESS"
        return CheckResult("metrics_endpoint", WARN, summary, fix)
    guarded = " with basic auth" if settings.metrics_basic_auth else ""
    if holder.pid is None:
        return CheckResult("metrics_endpoint", OK, f"{url} serves spendwatch's metrics{guarded}")
    served_by = "this process" if holder.pid == os.getpid() else f"process {holder.pid}"
    return CheckResult("metrics_endpoint", OK, f"{url} serves this ledger's metrics{guarded}, served by {served_by}")


def _get(url: str, credentials: tuple[str, str] | None, cafile: str | None) -> tuple[int, bytes, str | None]:
    """(HTTP status, body, None), or (0, b"", why nothing answered)."""
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        tls = ssl.create_default_context(cafile=cafile) if cafile else None
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=tls) as response:
            return response.status, response.read(), None
    except urllib.error.HTTPError as error:
        return error.code, error.read(), None
    except urllib.error.URLError as error:
        return 0, b"", printable(str(error.reason))
    except (OSError, ssl.SSLError) as error:
        return 0, b"", printable(str(error) or type(error).__name__)


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(info[4][0].startswith("127.") or info[4][0] == "::1" for info in infos)


def check_budgets(context: DoctorContext) -> CheckResult:
    """The budgets in force: this configuration's and those the apps recorded in the ledger, each limit with where
    it comes from; a run-time limit that overrides the configured one is a warning, so it does not stick unseen."""
    if context.settings is None:
        return _not_checked("budgets")
    limits = _limits_in_force(context)
    if not limits:
        summary = "no budget is configured: spend is counted, but nothing warns or stops it"
        fix = (
            "export SPENDWATCH_DAILY_BUDGET_USD=20 (or _MONTHLY_), or add [budgets.NAME] to the SPENDWATCH_CONFIG file"
        )
        return CheckResult("budgets", WARN, summary, fix)
    shown = ", ".join(_limit_shown(key, limit) for key, limit in list(limits.items())[:_MAX_LISTED])
    more = f" and {len(limits) - _MAX_LISTED} more" if len(limits) > _MAX_LISTED else ""
    summary = f"{shown}{more}; enforce={context.settings.enforce}"
    overridden = [key for key, limit in limits.items() if limit.source == "runtime"]
    if not overridden:
        return CheckResult("budgets", OK, summary)
    name, period = overridden[0]
    fix = f"spendwatch budget show says who set it and why; spendwatch budget clear {name} {period} goes back"
    return CheckResult("budgets", WARN, f"{summary}; a run-time limit wins over the configured one", fix)


@dataclass(frozen=True)
class _LimitInForce:
    usd: float
    source: str  # "config" or "runtime"
    configured_usd: float
    recorded: bool  # configured by an app's recorded start-up, not by this environment


def _limits_in_force(context: DoctorContext) -> dict[tuple[str, str], _LimitInForce]:
    """Every budget's limit in force, by (name, period): with a ledger, the apps' recorded budgets and run-time
    limits count too (as ``spendwatch status`` shows them)."""
    settings, run_time, recorded = context.settings, {}, set()
    if context.ledger is not None:
        from spendwatch.exporter.budgets import LedgerConfiguration

        known = LedgerConfiguration(context.ledger, settings, context.environ)
        settings, run_time = known.settings(), context.ledger.budget_limits()
        recorded = {spec.name for spec in settings.budgets if known.recorded(spec.name)}
    limits = {}
    for spec in settings.budgets:
        key = (spec.name, spec.period)
        source = "runtime" if key in run_time else "config"
        limits[key] = _LimitInForce(run_time.get(key, spec.limit_usd), source, spec.limit_usd, spec.name in recorded)
    return limits


def _limit_shown(key: tuple[str, str], limit: _LimitInForce) -> str:
    name, period = key
    text = f"{printable(name, 40)} ${limit.usd:g}/{period}"
    if limit.source == "runtime":
        return f"{text} (set at run time; configured ${limit.configured_usd:g})"
    return f"{text} (recorded at an app's start-up)" if limit.recorded else text


def _budgets_differ(context: DoctorContext, body: bytes) -> str | None:
    """How the budgets a ``/metrics`` body exposes differ from ours, or None when they agree: a budget we do not
    know, another limit, or one configured here that it lacks. Budgets only recorded by other apps over the ledger
    may be missing (each app serves its own)."""
    from prometheus_client.parser import text_string_to_metric_families

    from spendwatch.exporter.mapping import BUDGET_LIMIT

    exposed: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body.decode("utf-8", "replace")):
        for sample in family.samples if family.name == BUDGET_LIMIT else ():
            exposed[(sample.labels.get("budget", ""), sample.labels.get("period", ""))] = sample.value
    ours = _limits_in_force(context)
    for key, usd in sorted(exposed.items()):
        if key not in ours:
            return f"it shows budget {printable(key[0], 40)}/{key[1]}, which is not configured here"
        if not math.isclose(usd, ours[key].usd, rel_tol=1e-9, abs_tol=1e-9):
            return f"it shows {printable(key[0], 40)}/{key[1]} at ${usd:g}, where ours is ${ours[key].usd:g}"
    missing = [key for key, limit in ours.items() if key not in exposed and not limit.recorded]
    if missing:
        return f"it lacks budget {printable(missing[0][0], 40)}/{missing[0][1]}, which is configured here"
    return None


def check_clock(context: DoctorContext) -> CheckResult:
    if context.settings is None:
        return _not_checked("clock")
    zone = context.settings.timezone
    latest = context.ledger.latest_call_time() if context.ledger is not None else None
    if latest is not None and latest - context.now > CLOCK_SKEW_LIMIT_S:
        ahead = (latest - context.now) / 60
        summary = (
            f"the ledger's latest call is {ahead:.0f} minutes ahead of this machine's clock: "
            "this clock, or that of a host writing the ledger, is wrong, and calls land in the wrong day"
        )
        return CheckResult("clock", WARN, summary, "keep every host on NTP (timedatectl set-ntp true)")
    notes = [f"days and months run on {zone.key}, now {datetime.fromtimestamp(context.now, zone):%Y-%m-%d %H:%M %Z}"]
    change = _next_offset_change(zone, context.now)
    if change is not None:
        notes.append(f"it changes clocks on {change:%Y-%m-%d}, making that day 23 or 25 hours long")
    local = datetime.fromtimestamp(context.now).astimezone()
    chosen = "SPENDWATCH_TIMEZONE" in context.environ or "timezone" in context.settings.raw
    if not chosen and local.utcoffset() != datetime.fromtimestamp(context.now, zone).utcoffset():
        notes.append(f"this machine runs on {local:%Z} (set SPENDWATCH_TIMEZONE if days should start at its midnight)")
    return CheckResult("clock", OK, "; ".join(notes))


def _next_offset_change(zone, now: float) -> datetime | None:
    """The first day within a year on which ``zone``'s UTC offset changes (daylight saving), if any."""
    start = datetime.fromtimestamp(now, UTC)
    offset = start.astimezone(zone).utcoffset()
    for day in range(1, 367):
        moment = (start + timedelta(days=day)).astimezone(zone)
        if moment.utcoffset() != offset:
            return moment
    return None


# --- helpers ---------------------------------------------------------------------------------------------------


def _not_checked(name: str, why: str = "the configuration does not load", status: str = WARN) -> CheckResult:
    return CheckResult(name, status, f"not checked: {why}")


CHECKS: tuple[Callable[[DoctorContext], CheckResult], ...] = (
    check_configuration,
    _instrumentor_check("spendwatch_openai", "openai", optional=False),
    _instrumentor_check("spendwatch_lightrag", "lightrag-hku", optional=True),
    _instrumentor_check("spendwatch_bedrock", "botocore", optional=True),
    _instrumentor_check("spendwatch_anthropic", "anthropic", optional=True),
    _instrumentor_check("spendwatch_google_genai", "google-genai", optional=True),
    check_exporter_hook,
    check_other_instrumentations,
    check_opentelemetry_sdk,
    check_opentelemetry_exporters,
    check_ledger,
    check_journal,
    check_quarantine,
    check_leases,
    check_price_data,
    check_price_overrides,
    check_unpriced_models,
    check_metrics_endpoint,
    check_budgets,
    check_clock,
)


def counts(results: list[CheckResult]) -> dict[str, int]:
    return {status: sum(result.status == status for result in results) for status in (OK, WARN, FAIL)}


def iter_text(results: list[CheckResult]) -> Iterator[str]:
    """The human-readable report, one line per check and one per fix."""
    width = max(len(result.name) for result in results)
    for result in results:
        yield f"{result.status:<5} {result.name:<{width}}  {result.summary}"
        if result.fix:
            yield f"{'':<5} {'':<{width}}  fix: {result.fix}"
    tally = counts(results)
    yield ""
    warnings, failures = (
        ("warning" if tally[WARN] == 1 else "warnings"),
        ("failure" if tally[FAIL] == 1 else "failures"),
    )
    yield f"{len(results)} checks: {tally[OK]} ok, {tally[WARN]} {warnings}, {tally[FAIL]} {failures}"
