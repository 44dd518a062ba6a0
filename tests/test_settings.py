"""Settings: precedence keyword > environment > SPENDWATCH_CONFIG file > default, and one-sentence errors."""

from __future__ import annotations

import pytest

from spendwatch.exporter import open_ledger
from spendwatch.exporter.settings import BudgetSpec, load_settings
from spendwatch.instrumentation.errors import ConfigError


def test_defaults(tmp_path):
    settings = load_settings(environ={"XDG_STATE_HOME": str(tmp_path)})

    assert settings.ledger == str(tmp_path / "spendwatch" / "ledger.db")
    assert settings.metrics_address == ("127.0.0.1", 9464)
    assert str(settings.timezone) == "UTC"
    assert settings.thresholds == (0.75, 0.9, 1.0)
    assert settings.enforce == "off"
    assert settings.budgets == ()
    assert settings.categories == frozenset()


def test_keyword_beats_environment_beats_file(tmp_path):
    config = tmp_path / "spendwatch.toml"
    config.write_text('timezone = "Asia/Tokyo"\nenforce = "block"\nthresholds = [0.5, 0.8, 1.0]\n')
    environ = {"SPENDWATCH_CONFIG": str(config), "SPENDWATCH_TIMEZONE": "Europe/Berlin"}

    settings = load_settings({"thresholds": "0.6,0.7,0.9"}, environ=environ)

    assert str(settings.timezone) == "Europe/Berlin"
    assert settings.enforce == "block"
    assert settings.thresholds == (0.6, 0.7, 0.9)


def test_budgets_from_environment_and_file(tmp_path):
    config = tmp_path / "spendwatch.toml"
    config.write_text(
        "[budgets.global]\ndaily_usd = 10\nmonthly_usd = 200\n"
        '[budgets.metabolomics]\ncategory = "metabolite_identification"\ndaily_usd = 2.5\n'
    )
    environ = {"SPENDWATCH_CONFIG": str(config), "SPENDWATCH_DAILY_BUDGET_USD": "50"}

    budgets = set(load_settings(environ=environ).budgets)

    assert budgets == {
        BudgetSpec("global", "day", 50.0),
        BudgetSpec("global", "month", 200.0),
        BudgetSpec("metabolomics", "day", 2.5, category="metabolite_identification"),
    }


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SPENDWATCH_DAILY_BUDGET_USD": "-5"}, "SPENDWATCH_DAILY_BUDGET_USD='-5'"),
        ({"SPENDWATCH_MONTHLY_BUDGET_USD": "lots"}, "SPENDWATCH_MONTHLY_BUDGET_USD='lots'"),
        ({"SPENDWATCH_DAILY_BUDGET_USD": "nan"}, "SPENDWATCH_DAILY_BUDGET_USD='nan'"),
        ({"SPENDWATCH_ENFORCE": "sometimes"}, "SPENDWATCH_ENFORCE='sometimes'"),
        ({"SPENDWATCH_TIMEZONE": "Mars/Olympus"}, "SPENDWATCH_TIMEZONE='Mars/Olympus'"),
        ({"SPENDWATCH_THRESHOLDS": "0.9,0.75,1"}, "SPENDWATCH_THRESHOLDS='0.9,0.75,1'"),
        ({"SPENDWATCH_THRESHOLDS": "0.75,0.9"}, "SPENDWATCH_THRESHOLDS='0.75,0.9'"),
        ({"SPENDWATCH_METRICS_ADDRESS": "9464"}, "SPENDWATCH_METRICS_ADDRESS='9464'"),
        ({"SPENDWATCH_METRICS_ADDRESS": "localhost:99999"}, "SPENDWATCH_METRICS_ADDRESS='localhost:99999'"),
        ({"SPENDWATCH_CONFIG": "/nonexistent/spendwatch.toml"}, "SPENDWATCH_CONFIG='/nonexistent/spendwatch.toml'"),
    ],
)
def test_bad_settings_fail_in_one_sentence_naming_setting_and_value(environ, named):
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ)

    message = str(raised.value)
    assert named in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ("ledger = [", "not valid TOML"),
        ("budget = 5", "unknown key 'budget'"),
        ("[budgets.team]\nweekly_usd = 5", "unknown key 'weekly_usd'"),
        ("[budgets.team]\ncategory = 'x'", "needs daily_usd or monthly_usd"),
        ("[budgets.global]\ncategory = 'x'\ndaily_usd = 1", "cannot be scoped"),
        ("[budgets.team]\ndaily_usd = -1", "non-negative"),
        ("[budgets.team]\ndaily_usd = 1" + "0" * 400, "non-negative"),  # an integer too big for a float
    ],
)
def test_bad_config_files_name_the_file_and_the_problem(tmp_path, toml, problem):
    config = tmp_path / "spendwatch.toml"
    config.write_text(toml)

    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"SPENDWATCH_CONFIG": str(config)})

    assert str(config) in str(raised.value)
    assert problem in str(raised.value)


def test_a_config_file_starting_with_a_byte_order_mark_is_read(tmp_path):
    config = tmp_path / "spendwatch.toml"
    config.write_text("\ufefftimezone = 'Europe/Berlin'\n", encoding="utf-8")

    assert load_settings(environ={"SPENDWATCH_CONFIG": str(config)}).timezone.key == "Europe/Berlin"


def test_metrics_can_be_turned_off_and_basic_auth_is_never_echoed():
    assert load_settings(environ={"SPENDWATCH_METRICS_ADDRESS": "off"}).metrics_address is None
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"SPENDWATCH_METRICS_BASIC_AUTH": "secret-without-colon"})
    assert "secret-without-colon" not in str(raised.value)


def test_unknown_keyword_is_refused():
    with pytest.raises(ConfigError, match="unknown setting 'daily_budget'"):
        load_settings({"daily_budget": 5}, environ={})


@pytest.mark.parametrize("setting", ["ledger", "prices_file", "metrics_tls_certfile", "metrics_tls_keyfile"])
def test_a_relative_path_in_the_config_file_is_relative_to_the_config_files_directory(tmp_path, monkeypatch, setting):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "spendwatch.toml").write_text(f'{setting} = "data/file"\n')
    monkeypatch.chdir(tmp_path)

    settings = load_settings(environ={"SPENDWATCH_CONFIG": "etc/spendwatch.toml"})

    assert getattr(settings, setting) == str(tmp_path / "etc" / "data" / "file")


@pytest.mark.parametrize(
    ("setting", "value"),
    [("ledger", "postgresql://spendwatch@db/ledger"), ("ledger", "/var/lib/ledger.db"), ("prices_file", "/etc/p.toml")],
)
def test_absolute_paths_and_urls_in_the_config_file_are_kept_as_written(tmp_path, setting, value):
    config = tmp_path / "spendwatch.toml"
    config.write_text(f"{setting} = {value!r}\n")

    assert getattr(load_settings(environ={"SPENDWATCH_CONFIG": str(config)}), setting) == value


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("keyword", "prices_file={prices!r}: "),
        ("environment", "SPENDWATCH_PRICES_FILE={prices!r}: "),
        ("config file", "prices_file={prices!r} in SPENDWATCH_CONFIG={config!r}: "),
    ],
    ids=["keyword", "environment", "config-file"],
)
def test_a_broken_prices_file_is_named_by_the_setting_that_set_it(tmp_path, where, named):
    prices, config = str(tmp_path / "missing.toml"), str(tmp_path / "spendwatch.toml")
    (tmp_path / "spendwatch.toml").write_text('prices_file = "missing.toml"\n')
    keywords = {"prices_file": prices} if where == "keyword" else {}
    environ = {"SPENDWATCH_PRICES_FILE": prices} if where == "environment" else {"SPENDWATCH_CONFIG": config}

    with pytest.raises(ConfigError) as raised:
        load_settings(keywords, environ=environ).price_table()

    assert raised.value.message.startswith(named.format(prices=prices, config=config))
    assert "cannot read the file" in raised.value.message and "\n" not in raised.value.message


def test_a_bad_ledger_set_in_the_config_file_is_named_as_set_there(tmp_path):
    (tmp_path / "ledger-dir").mkdir()
    config = tmp_path / "spendwatch.toml"
    config.write_text('ledger = "ledger-dir"\n')

    with pytest.raises(ConfigError) as raised:
        open_ledger(load_settings(environ={"SPENDWATCH_CONFIG": str(config)}))

    expected = f"ledger={str(tmp_path / 'ledger-dir')!r} in SPENDWATCH_CONFIG={str(config)!r} is a directory"
    assert raised.value.message.startswith(expected)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('timezone = "Nope/Nowhere"', "timezone='Nope/Nowhere'"),
        ('enforce = "maybe"', "enforce='maybe'"),
        ("thresholds = [0.9, 0.5, 1.0]", "thresholds=[0.9, 0.5, 1.0]"),
    ],
)
def test_every_bad_setting_in_the_config_file_is_named_as_set_there(tmp_path, line, named):
    # One sentence reads "SETTING=VALUE in SPENDWATCH_CONFIG=PATH ...", whichever setting is wrong.
    config = tmp_path / "spendwatch.toml"
    config.write_text(line + "\n")

    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"SPENDWATCH_CONFIG": str(config)})

    assert raised.value.message.startswith(f"{named} in SPENDWATCH_CONFIG={str(config)!r} ")


def test_a_ledger_url_in_the_config_file_keeps_its_password_out_of_the_error(tmp_path):
    config = tmp_path / "spendwatch.toml"
    config.write_text('ledger = "postgresql://spendwatch:s3cret@127.0.0.1:1/ledger"\n')

    with pytest.raises(ConfigError) as raised:
        open_ledger(load_settings(environ={"SPENDWATCH_CONFIG": str(config)}))

    assert "s3cret" not in raised.value.message
    assert raised.value.message.startswith(
        "ledger='postgresql://spendwatch:***@127.0.0.1:1/ledger' in SPENDWATCH_CONFIG="
    )


def config_file_error(tmp_path, toml: str) -> str:
    """The one sentence load_settings refuses a SPENDWATCH_CONFIG file holding ``toml`` with."""
    config = tmp_path / "spendwatch.toml"
    config.write_text(toml + "\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"SPENDWATCH_CONFIG": str(config)})
    return raised.value.message


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[budgets.global]\ndaily_usd = 'fifty'", "budgets.global.daily_usd='fifty' in SPENDWATCH_CONFIG="),
        ("[budgets.team]\nmonthly_usd = -1", "budgets.team.monthly_usd=-1 in SPENDWATCH_CONFIG="),
        ("[budgets.team]\ndaily_usd = 1\nmodel = 5", "budgets.team.model=5 in SPENDWATCH_CONFIG="),
    ],
)
def test_a_bad_budget_key_in_the_config_file_is_named_down_to_the_key(tmp_path, toml, named):
    message = config_file_error(tmp_path, toml)

    assert message.startswith(named)
    assert "\n" not in message


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SPENDWATCH_THRESHOLDS": "1.2,1.5,2"}, "SPENDWATCH_THRESHOLDS='1.2,1.5,2'"),
        ({"SPENDWATCH_THRESHOLDS": "0.75,1.1,1.2"}, "SPENDWATCH_THRESHOLDS='0.75,1.1,1.2'"),
    ],
)
def test_warning_and_critical_thresholds_above_1_fail_at_start_up(environ, named):
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ)

    assert raised.value.message.startswith(named)
    assert "at most 1" in raised.value.message


def test_an_exceeded_threshold_above_1_is_allowed():
    assert load_settings(environ={"SPENDWATCH_THRESHOLDS": "0.75,0.9,1.1"}).thresholds == (0.75, 0.9, 1.1)


@pytest.mark.parametrize(
    ("environ", "named", "category"),
    [
        ({"SPENDWATCH_CATEGORIES": "review,has space"}, "SPENDWATCH_CATEGORIES='review,has space'", "has space"),
        ({"SPENDWATCH_CATEGORIES": "x" * 65}, f"SPENDWATCH_CATEGORIES='{'x' * 65}'", "x" * 65),
        ({"SPENDWATCH_CATEGORIES": "-leading-dash"}, "SPENDWATCH_CATEGORIES='-leading-dash'", "-leading-dash"),
    ],
)
def test_a_category_no_call_can_have_fails_at_start_up(environ, named, category):
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ)

    assert raised.value.message.startswith(f"{named} names the category {category!r}, which no call can have")
    assert "\n" not in raised.value.message


def test_a_budget_scoped_to_a_category_no_call_can_have_fails_at_start_up(tmp_path):
    message = config_file_error(tmp_path, "[budgets.team]\ncategory = 'team a'\ndaily_usd = 1")

    config = tmp_path / "spendwatch.toml"
    assert message.startswith(f"budgets.team.category='team a' in SPENDWATCH_CONFIG={str(config)!r} ")
    assert "no call can have" in message


def test_tidy_categories_are_accepted():
    settings = load_settings(environ={"SPENDWATCH_CATEGORIES": "metabolite_identification, team-a/feature.x:1"})

    assert settings.categories == frozenset({"metabolite_identification", "team-a/feature.x:1"})


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[routes]\n"/annotate" = "team a"', "routes.\"/annotate\"='team a' in SPENDWATCH_CONFIG="),
        ('[routes]\n"/annotate" = 5', "routes in SPENDWATCH_CONFIG="),
        ('routes = "everything"', "routes in SPENDWATCH_CONFIG="),
    ],
)
def test_a_route_to_a_category_no_call_can_have_fails_at_start_up(tmp_path, toml, named):
    message = config_file_error(tmp_path, toml)

    assert message.startswith(named)
    assert "\n" not in message


def test_routes_to_tidy_categories_are_kept_for_the_middleware(tmp_path):
    config = tmp_path / "spendwatch.toml"
    config.write_text('[routes]\n"/annotate" = "metabolite_identification"\n')

    assert load_settings(environ={"SPENDWATCH_CONFIG": str(config)}).raw["routes"] == {
        "/annotate": "metabolite_identification"
    }
