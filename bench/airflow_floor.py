"""
The Airflow floor: the shipped DAG's task graph with no-op tasks, so that what one mapped task costs
Airflow itself (task process, Task SDK supervisor, Execution API calls, scheduling, the database) can be
told from what our code adds. The floor DAG is generated from the parsed real DAG (never written into
``dags/``): the same task ids, edges, mapping (which task's output each mapped argument expands over),
trigger rules, pool, per-run and per-DAG limits, map index template, retries and timeouts, and the DAG's
``max_active_runs``, ``max_active_tasks`` and ``default_args``. Left out, as they are ours or cost
nothing per task: the task bodies (the expanded-over task returns ``count`` account-shaped dicts from the
run's conf, every other task a small dict), failure callbacks (run only on failure), the Deadline Alert,
asset outlets, and the schedule (the benchmark triggers runs).

    python -m bench.airflow_floor OUT_DIR    (writes OUT_DIR/cmdb_ec2_inventory_floor.py, prints its path)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools import sandbox

FLOOR_DAG_ID = f"{sandbox.DAG_ID}_floor"
REAL_DAG_FILE = sandbox.ROOT / "dags" / f"{sandbox.DAG_ID}.py"

# Task attributes the floor carries over from the real DAG (and the shape comparison checks).
TASK_ATTRIBUTES = (
    "trigger_rule",
    "pool",
    "pool_slots",
    "max_active_tis_per_dagrun",
    "max_active_tis_per_dag",
    "map_index_template",
    "retries",
    "retry_delay",
    "retry_exponential_backoff",
    "max_retry_delay",
    "execution_timeout",
    "priority_weight",
    "weight_rule",
    "owner",
)
DEFAULT_ARGS = ("owner", "retries", "retry_delay", "retry_exponential_backoff", "max_retry_delay")
DEFAULT_ARGS += ("execution_timeout",)

# The expanded-over task's body: ``count`` dicts shaped like the real DAG's accounts (its map index
# template reads their ``label``).
_ACCOUNTS_BODY = """\
        count = int(get_current_context()["params"]["count"])
        accounts = []
        for index in range(count):
            account_id, name = f"{300_000_000_000 + index:012d}", f"floor-{index:05d}"
            accounts.append({"id": account_id, "name": name, "label": f"{account_id} ({name})"})
        return accounts"""


class FloorError(ValueError):
    """The real DAG has something the floor generator cannot carry over (named in the message)."""


def load_dag(path: Path = REAL_DAG_FILE, dag_id: str = sandbox.DAG_ID) -> Any:
    """The DAG ``dag_id`` as Airflow's DagBag parses ``path`` (import errors raise)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path))
    if bag.import_errors:
        raise FloorError(f"{path} does not import: {bag.import_errors}")
    if dag_id not in bag.dags:
        raise FloorError(f"{path} has no DAG {dag_id!r} (it has {sorted(bag.dags)})")
    return bag.dags[dag_id]


def _source_of(arg: Any, where: str) -> str:
    """The task id whose return value ``arg`` (an XComArg) is; anything else is refused."""
    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    if not isinstance(arg, PlainXComArg) or arg.key != "return_value":
        raise FloorError(f"{where}: only another task's return value can be carried over, not {arg!r}")
    return str(arg.operator.task_id)


def _value(value: Any) -> Any:
    """A JSON/enum-free form of an attribute (enums by their value, timedeltas as seconds)."""
    from datetime import timedelta
    from enum import Enum

    if isinstance(value, Enum):
        return value.value
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _data_inputs(task: Any) -> tuple[dict[str, str], list[str]]:
    """``(mapped argument -> task id it expands over, [task id of each positional argument])``."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    where = f"task {task.task_id}"
    if isinstance(task, MappedOperator):
        expand = getattr(task, "op_kwargs_expand_input", None)
        if expand is None or not isinstance(getattr(expand, "value", None), Mapping):
            raise FloorError(f"{where}: only @task functions expanded over keyword arguments are carried")
        partial = task.partial_kwargs.get("op_kwargs") or {}
        if partial or task.partial_kwargs.get("op_args"):
            raise FloorError(f"{where}: partial() arguments are not carried over")
        return {name: _source_of(arg, where) for name, arg in expand.value.items()}, []
    if getattr(task, "op_kwargs", None):
        raise FloorError(f"{where}: keyword arguments are not carried over")
    # A classic operator (approve_removals' human-in-the-loop) takes no data from its upstream tasks.
    args = getattr(task, "op_args", None) or ()
    return {}, [_source_of(arg, f"{where} argument {i}") for i, arg in enumerate(args)]


def shape(dag: Any) -> dict[str, Any]:
    """What the floor must share with the real DAG: DAG limits, and per task its edges, mapping, settings."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    tasks = {}
    for task in dag.topological_sort():
        expands, args = _data_inputs(task)
        tasks[task.task_id] = {
            "mapped": isinstance(task, MappedOperator),
            "expands": expands,
            "args": args,
            "upstream": sorted(task.upstream_task_ids),
            "downstream": sorted(task.downstream_task_ids),
            **{name: _value(getattr(task, name, None)) for name in TASK_ATTRIBUTES},
        }
    return {
        "max_active_runs": dag.max_active_runs,
        "max_active_tasks": dag.max_active_tasks,
        "default_args": {k: _value(dag.default_args[k]) for k in DEFAULT_ARGS if k in dag.default_args},
        "tasks": tasks,
    }


def _literal(value: Any) -> str:
    from datetime import timedelta

    if isinstance(value, timedelta):
        return f"timedelta(seconds={value.total_seconds()!r})"
    return repr(_value(value))


def floor_source(dag: Any, dag_id: str = FLOOR_DAG_ID) -> str:
    """The Python source of the no-op DAG with ``dag``'s shape."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    order = dag.topological_sort()
    if any(getattr(t, "task_group", None) is not None and t.task_group.group_id for t in order):
        raise FloorError("task groups are not carried over")
    inputs = {t.task_id: _data_inputs(t) for t in order}
    expanded_over = {source for expands, _ in inputs.values() for source in expands.values()}
    defaults = {k: dag.default_args[k] for k in DEFAULT_ARGS if k in dag.default_args}
    lines = [
        f'"""No-op floor of {dag.dag_id} (generated by bench.airflow_floor from the parsed DAG)."""',
        "",
        "from __future__ import annotations",
        "",
        "from datetime import datetime, timedelta",
        "",
        "from airflow.sdk import Param, dag, get_current_context, task",
        "",
        "",
        "@dag(",
        f"    dag_id={dag_id!r},",
        "    schedule=None,",
        "    start_date=datetime(2026, 1, 1),",
        "    catchup=False,",
        f"    max_active_runs={dag.max_active_runs!r},",
        f"    max_active_tasks={dag.max_active_tasks!r},",
        "    default_args={" + ", ".join(f"{k!r}: {_literal(v)}" for k, v in defaults.items()) + "},",
        '    params={"count": Param(1, type="integer", minimum=0)},',
        '    tags=["bench"],',
        ")",
        "def floor() -> None:",
    ]
    for task in order:
        expands, args = inputs[task.task_id]
        settings = {name: getattr(task, name) for name in TASK_ATTRIBUTES}
        settings = {k: v for k, v in settings.items() if v is not None}
        decorator = ", ".join(
            [f"task_id={task.task_id!r}", "multiple_outputs=False"]
            + [f"{k}={_literal(v)}" for k, v in settings.items()]
        )
        params = list(expands) if isinstance(task, MappedOperator) else [f"arg{i}" for i in range(len(args))]
        lines += ["", f"    @task({decorator})", f"    def {task.task_id}({', '.join(params)}):"]
        if task.task_id in expanded_over:
            lines.append(_ACCOUNTS_BODY)
        else:
            lines.append(f"        return {{'task': {task.task_id!r}}}")
    lines.append("")
    for task in order:
        expands, args = inputs[task.task_id]
        if isinstance(task, MappedOperator):
            call = f"{task.task_id}.expand(" + ", ".join(f"{k}={v}_out" for k, v in expands.items()) + ")"
        else:
            call = f"{task.task_id}(" + ", ".join(f"{a}_out" for a in args) + ")"
        lines.append(f"    {task.task_id}_out = {call}")
        for upstream in sorted(task.upstream_task_ids - set(expands.values()) - set(args)):
            lines.append(f"    {upstream}_out >> {task.task_id}_out")
    lines += ["", "", "floor()", ""]
    return "\n".join(lines)


def write_floor_dag(folder: Path, dag: Any | None = None) -> Path:
    """Generate the floor DAG file into ``folder`` (a temporary DAGs folder, never ``dags/``)."""
    if folder.resolve() == (sandbox.ROOT / "dags").resolve():
        raise FloorError("the floor DAG must not be written into the project's dags/ folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{FLOOR_DAG_ID}.py"
    path.write_text(floor_source(dag if dag is not None else load_dag()))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.airflow_floor OUT_DIR")
    print(write_floor_dag(Path(sys.argv[1])))
