"""
Configuration fuzzing (issue point 5): whatever JSON the ``cmdb_ec2_inventory`` Variable holds, parsing it
gives valid settings or one ``ConfigError`` naming the key at fault — never another exception — and a task
reading an invalid Variable fails for good (``AirflowFailException``, no retry) before it builds an S3
store, an SNS hook or anything else that could write.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.cmdb_inventory.config import _KNOWN_KEYS, VARIABLE_KEY, ConfigError, Settings, parse_settings

BASE: dict[str, Any] = {
    "accounts": ["111111111111", {"id": "222222222222", "name": "Dev"}],
    "bucket": "cmdb-x",
}
SPECIAL_KEYS = {"(root)", "(json)", "(variable)"}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)
# Values close to valid ones, so fuzzing reaches the checks behind the type checks.
plausible = st.sampled_from(
    [
        "",
        "x",
        "us-east-1",
        "eu-west-1",
        "mars-north-1",
        "111111111111",
        "CMDBDiscovery",
        "cmdb/ec2-inventory",
        "../etc",
        "arn:aws:sns:us-east-1:111111111111:t",
        "alias/cmdb",
        "running",
        0,
        1,
        900,
        3600,
        43200,
        100000,
        -1,
        True,
        [],
        ["us-east-1"],
        ["us-east-1", "us-east-1"],
        ["111111111111"],
        [{"id": "111111111111", "name": "n"}],
        [{"id": 111111111111}],
        ["running", "terminated"],
        {},
        {"team": "x"},
        {"aws:x": "y"},
        {"role_arn": "arn:aws:iam::111111111111:role/OrgReader"},
        {"include_ous": ["ou-abcd-12345678"]},
    ]
)
overrides = st.dictionaries(st.sampled_from(sorted(_KNOWN_KEYS)), json_values | plausible, max_size=5)


def root_of(key: str) -> str:
    """``accounts[1].name`` -> ``accounts``; ``organizations.include_ous[0]`` -> ``organizations``."""
    return re.split(r"[.\[]", key, maxsplit=1)[0]


def outcome(raw: Any) -> Settings | ConfigError:
    """Parse; any exception other than ConfigError fails the test by propagating."""
    error: ConfigError | None = None
    try:
        return parse_settings(raw)
    except ConfigError as err:
        error = err
    assert str(error).startswith(f"invalid configuration {VARIABLE_KEY}.{error.key}: "), str(error)
    assert len(str(error)) < 1000
    return error


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_any_json_is_valid_settings_or_one_error_naming_the_key(raw: Any) -> None:
    result = outcome(raw)
    if isinstance(result, ConfigError):
        known = root_of(result.key) in _KNOWN_KEYS | SPECIAL_KEYS
        unknown_key_named = isinstance(raw, dict) and result.key in raw and result.key not in _KNOWN_KEYS
        assert known or unknown_key_named, result.key
    # The same document as JSON text (how the Variable arrives) gives the same outcome. (A string is
    # itself read as JSON text, so it is not encoded again.)
    if isinstance(raw, str):
        return
    again = outcome(json.dumps(raw))
    assert type(again) is type(result)
    if isinstance(result, ConfigError):
        assert again.key == result.key  # type: ignore[union-attr]


@settings(max_examples=600, deadline=None)
@given(overrides)
def test_a_bad_value_is_reported_under_its_own_key(changes: dict[str, Any]) -> None:
    raw = {**BASE, **changes}
    result = outcome(raw)
    if isinstance(result, ConfigError):
        # BASE is valid, so the fault is in a key we changed.
        assert root_of(result.key) in set(changes) | {"params"}, (result.key, changes)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_json_or_a_json_error(text: str) -> None:
    result = outcome(text)
    try:
        json.loads(text)
    except ValueError:
        assert isinstance(result, ConfigError)
        assert result.key == "(json)"


def test_invalid_variable_fails_every_task_for_good_before_anything_could_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk import Variable
    from airflow.sdk.exceptions import AirflowFailException

    from include.cmdb_inventory import alerts, run, tasks

    current: dict[str, Any] = {}
    touched: list[str] = []

    def spy(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            touched.append(name)
            raise AssertionError(f"{name} was reached with an invalid configuration")

        return record

    monkeypatch.setattr(Variable, "get", staticmethod(lambda key, default=None: current["raw"]))
    # Every module's binding of the run's factories (they are imported by name: patching run.py alone
    # would not reach inventory's or preflight's copy).
    factories = {"store_for": run.store_for, "hook_for": run.hook_for}
    bindings: dict[str, list[str]] = {name: [] for name in factories}
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith("include.cmdb_inventory"):
            for name, factory in factories.items():
                if getattr(module, name, None) is factory:
                    bindings[name].append(module_name)
                    monkeypatch.setattr(module, name, spy(f"{module_name.rsplit('.', 1)[-1]}.{name}"))
    assert bindings == {
        "store_for": ["include.cmdb_inventory.run", "include.cmdb_inventory.tasks"],
        "hook_for": [
            "include.cmdb_inventory.inventory",
            "include.cmdb_inventory.preflight",
            "include.cmdb_inventory.run",
        ],
    }
    monkeypatch.setattr("airflow.providers.amazon.aws.hooks.s3.S3Hook.get_conn", spy("S3Hook"))
    monkeypatch.setattr("airflow.providers.amazon.aws.hooks.sns.SnsHook.publish_to_target", spy("SnsHook"))
    monkeypatch.setattr(
        "airflow.providers.amazon.aws.notifications.sns.SnsNotifier.notify", spy("SnsNotifier")
    )

    class Ti:
        task_id = "scan_account"
        try_number = 1
        rendered_map_index = "111111111111"

        def xcom_pull(self, **_: Any) -> Any:
            return {"expected": [{"id": "111111111111", "name": ""}], "skip_reason": None}

        def xcom_push(self, **_: Any) -> None:
            touched.append("xcom_push")

    class DagRun:
        dag_id = "cmdb_ec2_inventory"
        run_id = "manual__fuzz"
        logical_date = datetime(2026, 11, 20, tzinfo=UTC)

    context: dict[str, Any] = {"params": {}, "ti": Ti(), "dag_run": DagRun(), "exception": RuntimeError("x")}
    account = {"id": "111111111111", "name": "", "label": "111111111111"}
    steps = {
        "resolve": lambda: tasks.resolve(context),
        "scan": lambda: tasks.scan(context, account),
        "merge": lambda: tasks.merge(context),
        "notify": lambda: tasks.notify(context, {"ds": "2026-11-20"}),
        # The preflight DAG's steps.
        "check_account": lambda: tasks.check_account(context, account),
        "write_report": lambda: tasks.write_report(context),
        "notify_readiness": lambda: tasks.notify_readiness(context, {"ds": "2026-11-20"}),
    }

    # The spies sit where the steps reach AWS: with a valid Variable (a session above the chained-role
    # cap, so resolve asks the hub's identity), each hook-building step stops at its module's spy.
    current["raw"] = json.dumps({**BASE, "session_duration_seconds": 43200})
    with monkeypatch.context() as valid:
        valid.setattr(tasks, "store_for", lambda settings: mock.MagicMock(name="store"))
        reached: dict[str, str] = {}
        for name in ("resolve", "scan", "check_account"):
            with pytest.raises(AssertionError, match="was reached"):
                steps[name]()
            reached[name] = touched.pop()
    assert reached == {
        "resolve": "run.hook_for",  # check_session_duration
        "scan": "inventory.hook_for",
        "check_account": "preflight.hook_for",
    }
    assert touched == []

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(json_values | overrides.map(lambda changes: {**BASE, **changes}))
    def check(raw: Any) -> None:
        touched.clear()  # a failing example's spies are its own
        current["raw"] = json.dumps(raw)  # the Variable's text
        result = outcome(current["raw"])
        if not isinstance(result, ConfigError):
            return  # valid: nothing to prove here
        for name, step in steps.items():
            with pytest.raises(AirflowFailException, match=re.escape(str(result))):
                step()
            assert touched == [], name
        alerts.TaskFailureNotifier().notify(context)  # logs the alert, publishes nothing, never raises
        assert touched == []

    check()
