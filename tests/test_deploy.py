"""The deployment examples under ``deploy/`` name only what exists: every setting is one
the server reads, every command one the CLI has, every extra one the package declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from deepresearch.cli import _parser
from deepresearch.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
FILES = sorted(path for path in DEPLOY.rglob("*") if path.is_file())


def _commands() -> set[str]:
    subparsers = next(action for action in _parser()._actions if action.dest == "command")
    return set(subparsers.choices)  # type: ignore[arg-type]


def test_every_setting_named_in_deploy_is_a_real_one() -> None:
    known = {f"DEEPRESEARCH_{name.upper()}" for name in Settings.model_fields}
    named = {
        name for path in FILES for name in re.findall(r"\bDEEPRESEARCH_[A-Z_]+\b", path.read_text())
    }
    assert named, "the examples name no settings at all"
    assert named <= known, f"not settings: {sorted(named - known)}"


def test_every_command_run_in_deploy_is_a_cli_command() -> None:
    run = {
        command
        for path in FILES
        # ExecStart=.../bin/deepresearch X, command: [deepresearch, X], CMD ["deepresearch", "X"]
        for command in re.findall(
            r'(?:/bin/deepresearch |\[deepresearch, |"deepresearch", ")(\w+)', path.read_text()
        )
    }
    assert {"serve", "worker"} <= run
    assert run <= _commands(), f"not commands: {sorted(run - _commands())}"


def test_compose_parses_and_runs_api_nodes_workers_and_a_persistent_redis() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["api"]["command"] == ["deepresearch", "serve"]
    assert services["worker"]["command"] == ["deepresearch", "worker"]
    redis = services["redis"]["command"]
    assert "--appendonly yes" in redis and "noeviction" in redis
    for name in ("api", "worker"):
        assert services[name]["environment"]["DEEPRESEARCH_REDIS_URL"].startswith("redis://")


def test_the_image_installs_extras_the_package_declares() -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    wanted = set(re.findall(r"'\.\[([\w,]+)\]'", (DEPLOY / "Dockerfile").read_text()))
    assert wanted and {e for group in wanted for e in group.split(",")} <= extras


def test_the_example_keys_file_loads() -> None:
    from deepresearch.server.auth import load_keyring

    assert len(load_keyring([], DEPLOY / "keys.example")) == 2
