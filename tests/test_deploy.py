"""``python -m vit_demo deploy``: the Space gets exactly the files the app runs from, and they
are enough to run it; the upload goes through huggingface_hub's API as a Gradio Space."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vit_demo import deploy
from vit_demo.cli import main
from vit_demo.finetune.job import BASE_ENV, base_timm_name
from vit_demo.hub import FINETUNE_BASE, HUB_FILES, VITB16_HUB_REPO
from vit_demo.registry import DEFAULT_VITB16_HUB

REPO = Path(__file__).resolve().parent.parent
# ZeroGPU's accepted torch versions and Pythons (the Spaces ZeroGPU page, checked 2026-11-22).
ZEROGPU_TORCH = {"2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1", "2.13.0"}
ZEROGPU_PYTHON = {"3.10", "3.12"}


def git_tracked(root: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(root), "ls-files"], capture_output=True, text=True,
                         check=True).stdout
    return [p for p in out.splitlines() if (root / p).is_file()]


def listed(out: str) -> list[str]:
    """The paths of a dry run's "<size>  <path>" lines."""
    return [line.split()[-1] for line in out.splitlines() if line.strip()[:1].isdigit()
            and len(line.split()) == 2]


def test_dry_run_lists_exactly_the_space_files_of_this_checkout(capsys):
    assert main(["deploy", "someone/vit-demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    files = listed(out)
    tracked = git_tracked(REPO)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    expected = sorted(
        ["app.py", "requirements.txt", "README.md", ".gitattributes"]
        + [p for p in tracked if p.startswith("vit_demo/") and p.endswith(".py")]
        + [p for p in tracked if p.startswith("weights/") and p.endswith((".safetensors", ".json"))]
        + [p for p in tracked if p.endswith(".png") and f"]({p})" in readme])  # images it shows
    assert files == expected
    for path in ("weights/vit-scratch-cifar10.safetensors", "vit_demo/ui/__init__.py",
                 "docs/screenshot-classify.png"):
        assert path in files
    assert not [p for p in files if p.split("/")[0] in ("tests", "benchmarks", "scripts", ".ci")]
    total = sum((REPO / p).stat().st_size for p in files)
    assert f"{len(files)} files, {total / 1e6:.1f} MB" in out
    assert "dry run: nothing uploaded" in out
    assert "https://huggingface.co/spaces/someone/vit-demo" in out


def test_listed_files_alone_import_the_whole_app(tmp_path):
    """A folder holding only the listed files imports app.py and every vit_demo module (but
    ``__main__``, which runs the command line)."""
    for path in deploy.space_files(REPO):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes((REPO / path).read_bytes())
    code = ("import importlib, pkgutil, app, vit_demo; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages("
            "vit_demo.__path__, 'vit_demo.') if m.name != 'vit_demo.__main__']; "
            "print(vit_demo.__file__)")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert Path(run.stdout.strip()).resolve() == (tmp_path / "vit_demo" / "__init__.py").resolve()


def test_only_tracked_files_leave_the_machine(tmp_path):
    """Untracked weights, a virtualenv, caches, tests and notebooks beside the app stay local."""
    def write(path: str, data: bytes = b"x") -> None:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)

    readme = "---\nsdk: gradio\n---\n![shot](./docs/shown.png) ![remote](https://x.org/a.png)\n"
    for path in ("app.py", "requirements.txt", ".gitattributes", "vit_demo/__init__.py",
                 "vit_demo/ui/tab.py", "weights/a.safetensors", "weights/a.json",
                 "weights/notes.txt", "docs/shown.png", "docs/hidden.png", "tests/test_x.py",
                 "benchmarks/b.py", "vit_demo/data.npz"):
        write(path)
    write("README.md", readme.encode())
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "-A"], check=True)
    for path in ("weights/untracked.safetensors", ".venv/lib/x.py", "vit_demo/__pycache__/x.pyc",
                 "vit_demo/new.py"):
        write(path)
    (tmp_path / ".gitignore").write_text(".venv/\n__pycache__/\n")
    assert deploy.space_files(tmp_path) == [
        ".gitattributes", "README.md", "app.py", "docs/shown.png", "requirements.txt",
        "vit_demo/__init__.py", "vit_demo/ui/tab.py", "weights/a.json", "weights/a.safetensors"]


def test_outside_a_git_checkout_or_without_app_files_it_refuses(tmp_path, capsys):
    assert deploy.cmd_deploy(deploy_args("someone/space"), root=tmp_path) == 1
    assert "is not a git checkout" in capsys.readouterr().out
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert deploy.cmd_deploy(deploy_args("someone/space"), root=tmp_path) == 1
    assert "not tracked by git" in capsys.readouterr().out
    assert main(["deploy", "not-a-space-id", "--dry-run"]) == 1
    assert "'not-a-space-id' is not OWNER/SPACE" in capsys.readouterr().out


def deploy_args(space: str, dry_run: bool = True):
    import argparse

    parser = argparse.ArgumentParser()
    deploy.add_arguments(parser)
    return parser.parse_args([space] + (["--dry-run"] if dry_run else []))


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls, touches no network."""
    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("CommitInfo", (), {"commit_url": "https://huggingface.co/spaces/o/s/commit/1"})


def test_upload_creates_a_gradio_space_and_sends_exactly_the_files(monkeypatch, capsys):
    import huggingface_hub

    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert main(["deploy", "someone/vit-demo"]) == 0
    assert "uploaded: https://huggingface.co/spaces/o/s/commit/1" in capsys.readouterr().out
    (create, repo_id, create_kwargs), (upload, upload_kwargs) = RecordingApi.calls
    assert (create, repo_id) == ("create_repo", "someone/vit-demo")
    assert create_kwargs == {"repo_type": "space", "space_sdk": "gradio", "exist_ok": True}
    assert upload == "upload_folder"
    assert upload_kwargs["repo_id"] == "someone/vit-demo" and upload_kwargs["repo_type"] == "space"
    assert Path(upload_kwargs["folder_path"]) == REPO
    assert upload_kwargs["allow_patterns"] == deploy.space_files(REPO)
    assert upload_kwargs["delete_patterns"] == "*"


def test_upload_failure_says_how_to_log_in(monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import LocalTokenNotFoundError

    class NoToken(RecordingApi):
        def create_repo(self, repo_id, **kwargs):
            raise LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoToken)
    assert main(["deploy", "someone/vit-demo"]) == 1
    out = capsys.readouterr().out
    assert "deploy: could not publish https://huggingface.co/spaces/someone/vit-demo: Token is " \
           "required" in out and "hf auth login" in out


@pytest.mark.parametrize("path", ["weights/vit-scratch-cifar10.safetensors",
                                  "docs/screenshot-classify.png", "weights/x.bin"])
def test_binaries_are_marked_for_lfs(path):
    out = subprocess.run(["git", "-C", str(REPO), "check-attr", "filter", "diff", "merge", "text",
                          "--", path], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"{path}: filter: lfs", f"{path}: diff: lfs", f"{path}: merge: lfs",
                                f"{path}: text: unset"]


def test_readme_front_matter_configures_a_zerogpu_space(monkeypatch):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(text.split("---\n")[1])
    pins = dict(re.findall(r"^([\w-]+)(?:\[[\w,-]+\])?==(\S+)$", (REPO / "requirements.txt").read_text(), re.M))
    assert front["sdk"] == "gradio" and front["sdk_version"] == pins["gradio"]
    assert front["python_version"] in ZEROGPU_PYTHON and pins["torch"] in ZEROGPU_TORCH
    assert front["app_file"] in deploy.space_files(REPO)
    assert len(front["short_description"]) <= 60
    # Every hub file the app reads is cached at build time: the ViT-B/16 checkpoint (timm reads
    # its config.json, then pytorch_model.bin, the weights file the repository has) and the
    # fine-tune base (timm reads model.safetensors of its timm/ repository).
    # HUB_FILES as Spaces' ``preload_from_hub`` entries: "owner/name file1,file2"
    preload = [f"{repo} {','.join(files)}" for repo, files in HUB_FILES.items()]
    assert front["preload_from_hub"] == preload == [
        f"{VITB16_HUB_REPO} config.json,pytorch_model.bin",
        f"timm/{FINETUNE_BASE} model.safetensors"]
    assert front["models"] == [VITB16_HUB_REPO, f"timm/{FINETUNE_BASE}"]
    # ... and they are the models the app loads by default.
    monkeypatch.delenv(BASE_ENV, raising=False)
    assert DEFAULT_VITB16_HUB == f"hf-hub:{VITB16_HUB_REPO}" and base_timm_name() == FINETUNE_BASE
    assert "datasets" not in front  # the app reads no hub dataset
