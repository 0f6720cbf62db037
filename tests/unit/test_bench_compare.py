"""``python -m bench --compare``: ratios are taken per pair of back-to-back runs, and the
spread shown is theirs; CPU per operation comes from the process's own clock.

No timing is asserted here (performance is measured by ``python -m bench`` only): these
check the arithmetic and the command line.
"""

from __future__ import annotations

import os

import pytest

from bench import harness
from bench.base import CpuClock, process_cpu_s
from bench.harness import Cell, pair_ratios, parse_args, ratio_text, render_markdown


def cell(figure: str, values: dict[int, float]) -> Cell:
    """A cell whose run ``n`` measured ``values[n]`` (runs not listed failed)."""
    return Cell(runs=[{figure: v} for v in values.values()], run_numbers=list(values))


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ({1: 50.0, 2: 90.0, 3: 80.0}, {1: 100.0, 2: 100.0, 3: 40.0}, [0.5, 0.9, 2.0]),
        # A run that failed on one side leaves its pair out, not a shifted pairing.
        ({1: 50.0, 3: 80.0}, {1: 100.0, 2: 999.0, 3: 40.0}, [0.5, 2.0]),
        ({1: 50.0}, {2: 100.0}, []),
    ],
)
def test_pairs_match_on_the_run_number(
    ours: dict[int, float], theirs: dict[int, float], expected: list[float]
) -> None:
    assert pair_ratios(cell("x_per_s", ours), cell("x_per_s", theirs), "x_per_s") == expected


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ({1: 50.0, 2: 90.0, 3: 80.0}, {1: 100.0, 2: 100.0, 3: 40.0}, "0.80x (0.50-2.00)"),
        ({1: 50.0}, {1: 100.0}, "0.50x"),  # one pair: no spread to show
        ({}, {1: 100.0}, "n/a"),
    ],
)
def test_the_ratio_is_of_the_medians_with_the_pairs_spread(
    ours: dict[int, float], theirs: dict[int, float], expected: str
) -> None:
    assert ratio_text(cell("x_per_s", ours), cell("x_per_s", theirs), "x_per_s") == expected


def test_the_markdown_table_has_the_headline_figures() -> None:
    results = {
        "pipe": {
            "aio-pika": cell("msg_per_s", {1: 1000.0, 2: 1200.0}),
            "amqp_agents": cell("msg_per_s", {1: 900.0, 2: 1300.0}),
        }
    }
    table = render_markdown(results, ["pipe"], "quorum")
    assert "| pipe | msg_per_s | 1,100 | 1,100 | 1.00x (0.90-1.08) |" in table.splitlines()


@pytest.mark.parametrize(
    ("argv", "workloads", "runs"),
    [
        (["--compare"], list(harness.COMPARE_WORKLOADS), harness.COMPARE_RUNS),
        (["--compare", "--runs", "2", "--workloads", "pipe"], ["pipe"], 2),
        (["--compare", "--runs=4", "--workloads=rpc_seq"], ["rpc_seq"], 4),
    ],
)
def test_compare_runs_both_sides_alternately(
    argv: list[str], workloads: list[str], runs: int
) -> None:
    args = parse_args([*argv, "--impl", "amqp_agents"])
    assert args.impl == ["aio-pika", "amqp_agents"]  # the baseline first in each pair
    assert args.workloads == workloads
    assert args.runs == runs


def test_a_broker_pid_that_is_no_process_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--broker-pid", "999999999"])
    assert "no such process" in capsys.readouterr().err


def test_the_clock_gives_cpu_per_operation_for_client_and_broker() -> None:
    clock = CpuClock()
    clock.broker_pid = os.getpid()  # any process will do: this one
    clock.start()
    sum(i * i for i in range(200_000))  # some CPU in the window
    clock.stop(ops=10)
    assert clock.figures["client_cpu_us_per_op"] > 0
    assert clock.figures["broker_cpu_us_per_op"] >= 0
    assert process_cpu_s(os.getpid()) > 0
