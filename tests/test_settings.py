"""Operator settings: public/private defaults, overrides, bad values, spec checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffmix.settings import Settings, check_spec


def _settings(**env: str) -> Settings:
    return Settings.from_env(env)


def test_private_defaults(tmp_path: Path) -> None:
    s = _settings(DIFFMIX_HOME=str(tmp_path))
    assert s.home == tmp_path.resolve()
    assert s.public is False and s.mode == "private"
    assert s.allow_local_paths is True
    assert s.allow_hub is True
    assert s.allowed_roots == ()
    assert s.max_upload_mb == 2048 and s.max_upload_bytes == 2048 * 2**20
    assert s.model == "nano"


def test_space_id_makes_it_public() -> None:
    s = _settings(SPACE_ID="someone/diffmix")
    assert s.public is True and s.mode == "public"
    assert s.allow_local_paths is False
    assert s.max_upload_mb == 200


@pytest.mark.parametrize(
    ("env", "public"),
    [
        ({"DIFFMIX_PUBLIC": "1"}, True),
        ({"DIFFMIX_PUBLIC": "true"}, True),
        ({"DIFFMIX_PUBLIC": "0", "SPACE_ID": "a/b"}, False),
        ({"DIFFMIX_PUBLIC": "", "SPACE_ID": "a/b"}, True),
        ({"SPACE_ID": "  "}, False),
    ],
)
def test_public_flag_wins_over_space_id(env: dict[str, str], public: bool) -> None:
    assert _settings(**env).public is public


def test_overrides() -> None:
    s = _settings(
        SPACE_ID="a/b",
        DIFFMIX_ALLOW_LOCAL_PATHS="1",
        DIFFMIX_MAX_UPLOAD_MB="50",
        DIFFMIX_MODEL="stable-diffusion-v1-5/stable-diffusion-v1-5",
        DIFFMIX_ALLOW_HUB="0",
    )
    assert s.public and s.allow_local_paths
    assert s.max_upload_mb == 50
    assert s.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert s.allow_hub is False
    assert _settings(DIFFMIX_ALLOW_LOCAL_PATHS="0").allow_local_paths is False


def test_allowed_roots_are_split_and_resolved(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    s = _settings(DIFFMIX_ALLOWED_ROOTS=os.pathsep.join([str(a), "", str(b)]))
    assert s.allowed_roots == (a.resolve(), b.resolve())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DIFFMIX_MAX_UPLOAD_MB", "abc"),
        ("DIFFMIX_MAX_UPLOAD_MB", "0"),
        ("DIFFMIX_MAX_UPLOAD_MB", "-5"),
        ("DIFFMIX_PUBLIC", "maybe"),
        ("DIFFMIX_ALLOW_LOCAL_PATHS", "2"),
        ("DIFFMIX_ALLOW_HUB", "yes please"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        _settings(**{name: value})
    assert name in str(info.value) and repr(value) in str(info.value)


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFMIX_MAX_UPLOAD_MB", "7")
    monkeypatch.setenv("DIFFMIX_PUBLIC", "1")
    s = Settings.from_env()
    assert s.public and s.max_upload_mb == 7


def test_settings_are_frozen() -> None:
    s = _settings()
    with pytest.raises(AttributeError):
        s.public = True  # type: ignore[misc]


# --------------------------------------------------------------------------- check_spec


def test_demo_always_allowed() -> None:
    assert check_spec(" demo ", _settings(DIFFMIX_PUBLIC="1", DIFFMIX_ALLOW_HUB="0")) == "demo"


def test_empty_spec_refused() -> None:
    with pytest.raises(ValueError, match="empty dataset spec"):
        check_spec("  ", _settings())


def test_local_path_refused_when_public(tmp_path: Path) -> None:
    spec = str(tmp_path / "birds")
    with pytest.raises(ValueError) as info:
        check_spec(spec, _settings(SPACE_ID="a/b"))
    msg = str(info.value)
    assert spec in msg and "DIFFMIX_ALLOW_LOCAL_PATHS=1" in msg and "public" in msg


def test_local_path_allowed_when_private(tmp_path: Path) -> None:
    spec = str(tmp_path / "birds.zip")
    assert check_spec(spec, _settings()) == spec


def test_allowed_roots_enforced(tmp_path: Path) -> None:
    root, home, other = tmp_path / "data", tmp_path / "home", tmp_path / "elsewhere"
    for d in (root, home, other):
        d.mkdir()
    s = _settings(DIFFMIX_HOME=str(home), DIFFMIX_ALLOWED_ROOTS=str(root))
    assert check_spec(str(root / "cub"), s) == str(root / "cub")
    assert check_spec(str(home / "uploads" / "x.zip"), s)  # the workspace is always allowed
    with pytest.raises(ValueError) as info:
        check_spec(str(other / "cub"), s)
    assert str(other / "cub") in str(info.value) and "DIFFMIX_ALLOWED_ROOTS" in str(info.value)
    # ".." cannot escape an allowed root
    with pytest.raises(ValueError, match="outside the allowed folders"):
        check_spec(str(root / ".." / "elsewhere" / "cub"), s)


def test_symlink_out_of_allowed_root_refused(tmp_path: Path) -> None:
    root, other = tmp_path / "data", tmp_path / "secret"
    root.mkdir()
    other.mkdir()
    (root / "link").symlink_to(other, target_is_directory=True)
    s = _settings(DIFFMIX_HOME=str(tmp_path / "home"), DIFFMIX_ALLOWED_ROOTS=str(root))
    with pytest.raises(ValueError, match="outside the allowed folders"):
        check_spec(str(root / "link"), s)


def test_hub_allowed_and_refused() -> None:
    assert check_spec("hub:owner/name", _settings()) == "hub:owner/name"
    assert check_spec("hub:owner/name:test", _settings(SPACE_ID="a/b")) == "hub:owner/name:test"
    with pytest.raises(ValueError) as info:
        check_spec("hub:owner/name", _settings(DIFFMIX_ALLOW_HUB="0"))
    assert "hub:owner/name" in str(info.value) and "DIFFMIX_ALLOW_HUB=1" in str(info.value)


@pytest.mark.parametrize("spec", ["hub:", "hub:justname", "hub:a/b/c", "hub:owner/na me"])
def test_malformed_hub_id_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="not a Hub id"):
        check_spec(spec, _settings())


# --------------------------------------------------------------------------- work limits


def test_limits_are_small_in_public_generous_in_private_and_overridable() -> None:
    from diffmix.settings import LIMITS

    public = _settings(DIFFMIX_PUBLIC="1").limits
    private = _settings().limits
    for name, lim in LIMITS.items():
        assert getattr(public, name) == lim.public and getattr(private, name) == lim.private
    assert public.max_sampling_steps == 100 and public.max_jobs_per_visitor == 2
    assert private.max_jobs == 0  # 0: no limit
    raised = _settings(DIFFMIX_PUBLIC="1", DIFFMIX_MAX_SAMPLING_STEPS="400", DIFFMIX_MAX_JOBS="0")
    assert raised.limits.max_sampling_steps == 400 and raised.limits.max_jobs == 0
    with pytest.raises(ValueError, match="DIFFMIX_MAX_STEPS='lots'"):
        _settings(DIFFMIX_MAX_STEPS="lots")
    with pytest.raises(ValueError, match="DIFFMIX_MAX_RANK='-1'"):
        _settings(DIFFMIX_MAX_RANK="-1")
    with pytest.raises(ValueError, match="DIFFMIX_PREVIEW_CONCURRENCY"):
        _settings(DIFFMIX_PREVIEW_CONCURRENCY="0")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"dataset": "/etc"}, "server paths are not allowed"),
        ({"dataset": "--config=/etc/x.yaml"}, "cannot start with '-'"),
        ({"dataset": "demo:12345"}, "demo seeds 0 to 7"),
        ({"model": "/etc"}, "model '/etc' refused"),
        ({"adapter": "/tmp"}, "adapter '/tmp' refused"),
        ({"synthetic": "{home}/synthetic/a,/etc"}, "synthetic '/etc' refused"),
        ({"confusion": "/etc/passwd"}, "confusion '/etc/passwd' refused"),
        ({"config": "/etc/x.yaml"}, "config '/etc/x.yaml' refused"),
        ({"pretrained": "/etc/w.pt"}, "pretrained weights '/etc/w.pt' refused"),
        ({"steps": 10**9}, "steps = 1000000000 is over .* 5000 .*DIFFMIX_MAX_STEPS"),
        ({"num_inference_steps": 4000}, "num_inference_steps = 4000 is over .* 100"),
        ({"rank": 10**5}, "rank = 100000 is over"),
        ({"batch_size": 10**6}, "batch_size = 1000000 is over"),
        ({"epochs": 10**9}, "epochs = 1000000000 is over"),
        ({"num_threads": 10**6}, "num_threads = 1000000 is over"),
        ({"multiplier": 1000}, "multiplier = 1000 is over"),
    ],
)
def test_check_request_refuses_what_a_public_deployment_does_not_allow(
    tmp_path: Path, fields: dict, needle: str
) -> None:
    from diffmix.settings import check_request

    s = _settings(DIFFMIX_PUBLIC="1", DIFFMIX_HOME=str(tmp_path))
    fields = {k: v.format(home=tmp_path) if isinstance(v, str) else v for k, v in fields.items()}
    with pytest.raises(ValueError, match=needle):
        check_request("train", fields, s)


def test_check_request_allows_the_workspace_uploads_and_private_machines(tmp_path: Path) -> None:
    from diffmix.settings import check_request

    public = _settings(DIFFMIX_PUBLIC="1", DIFFMIX_HOME=str(tmp_path))
    ok = {"dataset": str(tmp_path / "uploads" / "x.zip"), "model": "nano", "steps": 5000,
          "adapter": str(tmp_path / "adapters" / "a"), "synthetic": [str(tmp_path / "s")],
          "num_inference_steps": 100, "dataset_seed": 3, "pretrained": "timm"}  # fmt: skip
    check_request("generate", ok, public)
    check_request("generate", {"dataset": "demo:7", "ti_only": True}, public)
    for builtin in ("lite0", "scratch"):  # the built-in backbone names are no server file
        check_request("train", {"pretrained": builtin}, public)
    private = _settings(DIFFMIX_HOME=str(tmp_path))
    check_request("train", {"dataset": "/data/birds", "epochs": 100_000, "model": "/m"}, private)
    with pytest.raises(ValueError, match="cannot start with '-'"):
        check_request("train", {"dataset": "-rf"}, private)
