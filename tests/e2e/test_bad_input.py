"""Bad config input on the real command line: one ``ERROR:`` line naming the key, a non-zero exit,
no traceback, and no run directory left behind (issue 10, item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # A misspelled key added with '+': Hydra's force-add skips the schema, so FinSense refuses.
        (
            ["+agent.learing_rate=0.5"],
            "agent.learing_rate is not a key of agent (did you mean agent.learning_rate?)",
        ),
        (["++agent.learing_rate=0.5"], "did you mean agent.learning_rate?"),
        (["+foo=1"], "foo is not a config key"),
        (["+episodez=3"], "episodez is not a config key (did you mean episodes?)"),
        (["+env.windowsize=10"], "env.windowsize is not a key of env (did you mean env.window_"),
        (["+env.data.nsteps=10"], "env.data.nsteps is not a key of env.data (did you mean"),
        (["+checkpoints.max_kept=3"], "did you mean checkpoints.max_keep?"),
        (
            ["agent.batch_size=4096", "agent.buffer_size=1000"],
            "agent.batch_size=4096 must be <= agent.buffer_size=1000",
        ),
        (["agent.gamma=???"], "agent.gamma has no value"),
    ],
    ids=[
        "plus-agent-typo",
        "plusplus-agent-typo",
        "plus-top-unknown",
        "plus-top-typo",
        "plus-env-typo",
        "plus-env-data-typo",
        "plus-checkpoints-typo",
        "batch-over-buffer",
        "missing-value",
    ],
)
def test_bad_config_key_is_one_clear_line_and_nonzero_exit(
    tmp_path: Path, train_cmd, args: list[str], expected: str
) -> None:
    proc = train_cmd("episodes=1", *args)
    combined = proc.stdout + proc.stderr
    assert proc.returncode != 0, combined
    assert "Traceback" not in combined
    errors = [line for line in combined.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, combined
    assert expected in errors[0]
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or list(outputs.iterdir()) == []
