"""``tools/proxy_table.py --run``: the types' runs, N at a time, their failures named (the
training command is replaced by a trivial one: no training here)."""
import tools.proxy_table as table
from utils.proxies.registry import PROXIES


def test_runs_go_n_at_a_time_to_their_logs_and_failures_are_named(tmp_path, monkeypatch):
    types = [PROXIES["vignette"], PROXIES["censorize"], PROXIES["exposure"]]
    monkeypatch.setattr(table, "COMMAND", "python -c print('{type}')")
    assert table.run_all(types, tmp_path, 2) == []
    assert (tmp_path / "table-logs" / "censorize.log").read_text().strip() == "censorize"
    monkeypatch.setattr(table, "COMMAND", "python -c __import__('sys').exit('{type}'=='censorize')")
    assert table.run_all(types, tmp_path, 2) == ["censorize"]
