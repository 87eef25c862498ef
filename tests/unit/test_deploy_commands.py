"""Remote deploy commands are values: data travels as positional parameters, never in the script."""

import os
import subprocess
from pathlib import Path

from tako.deploy import commands
from tako.deploy.layout import AppLayout
from tako.remote.executor import Command


def test_lock_command_passes_data_as_arguments() -> None:
    layout = AppLayout("my-app")
    command = commands.acquire_lock(layout, "me@laptop $(rm -rf /)")
    assert command.argv[:2] == ("sh", "-c")
    assert command.argv[3:] == ("sh", layout.app_dir, layout.lock, "me@laptop $(rm -rf /)")
    assert "$(rm" not in command.argv[2]
    assert command.render().startswith("sh -c ")


def run(command: Command, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(command.argv), input=stdin, capture_output=True)


def test_lock_is_exclusive_and_names_holder(tmp_path: Path) -> None:
    layout = AppLayout("app", root=str(tmp_path))
    assert run(commands.acquire_lock(layout, "first")).returncode == 0
    second = run(commands.acquire_lock(layout, "second"))
    assert second.returncode == commands.LOCK_HELD_STATUS
    assert second.stdout.decode().strip() == "first"
    # Only the holder releases it.
    run(commands.release_lock(layout, "second"))
    assert Path(layout.lock).is_dir()
    run(commands.release_lock(layout, "first"))
    assert not Path(layout.lock).exists()


def test_extract_refuses_escaping_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    (src / "evil").symlink_to("/etc/passwd")
    archive = tmp_path / "a.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(src), "."], check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run(commands.extract(str(archive), str(dest)))
    assert result.returncode != 0
    assert b"links outside the release" in result.stderr


def releases_v0_to(count: int, tmp_path: Path) -> tuple[AppLayout, Path]:
    """An app layout with releases v0 .. v<count-1>, each newer than the one before."""
    layout = AppLayout("app", root=str(tmp_path))
    releases = Path(layout.releases)
    releases.mkdir(parents=True)
    for i in range(count):
        d = releases / f"v{i}"
        d.mkdir()
        os.utime(d, (1000 + i, 1000 + i))
    return layout, releases


def test_finalize_switches_current_prunes_and_unlocks(tmp_path: Path) -> None:
    layout, releases = releases_v0_to(8, tmp_path)
    assert run(commands.acquire_lock(layout, "me")).returncode == 0
    assert run(commands.finalize(layout, "v2", "n1", "me", keep=5)).returncode == 0
    assert os.readlink(layout.current) == "releases/v2"
    # keep counts the live release: it and the four newest others.
    assert sorted(p.name for p in releases.iterdir()) == ["v2", "v4", "v5", "v6", "v7"]
    assert not Path(layout.lock).exists()


def test_prune_keeps_exactly_keep_releases_with_the_live_one_among_the_newest(tmp_path: Path) -> None:
    layout, releases = releases_v0_to(4, tmp_path)
    assert run(commands.finalize(layout, "v3", "n1", "", keep=2, unlock=False)).returncode == 0
    assert sorted(p.name for p in releases.iterdir()) == ["v2", "v3"]


def test_finish_staging_writes_env_from_stdin_and_promotes(tmp_path: Path) -> None:
    layout = AppLayout("app", root=str(tmp_path))
    staging = Path(layout.staging("v1", "n1"))
    staging.mkdir(parents=True)
    Path(layout.shared_logs).mkdir(parents=True)
    release = layout.release("v1")
    result = run(
        commands.finish_staging(layout, str(staging), release, layout.replaced("v1", "n1"), "{}"), b'A="1"\n'
    )
    assert result.returncode == 0, result.stderr
    assert (Path(release) / ".env").read_text() == 'A="1"\n'
    assert oct((Path(release) / ".env").stat().st_mode & 0o777) == "0o600"
    assert os.readlink(Path(release) / "logs") == layout.shared_logs
    assert not staging.exists()


def test_rollback_keeps_a_release_of_the_same_version_it_did_not_promote(tmp_path: Path) -> None:
    layout = AppLayout("app", root=str(tmp_path))
    Path(layout.shared_logs).mkdir(parents=True)
    release = Path(layout.release("v1"))
    release.mkdir(parents=True)
    (release / "live.txt").write_text("the live release")
    staging, replaced = layout.staging("v1", "n2"), layout.replaced("v1", "n2")
    Path(staging).mkdir()
    # Interrupted before its promotion: the existing v1 stays.
    assert run(commands.rollback(staging, str(release), replaced)).returncode == 0
    assert (release / "live.txt").exists() and not Path(staging).exists()
    # Promoted (the old v1 moved aside), then undone: the old v1 is back.
    Path(staging).mkdir()
    assert run(commands.finish_staging(layout, staging, str(release), replaced, "{}"), b"").returncode == 0
    assert not (release / "live.txt").exists()
    assert run(commands.rollback(staging, str(release), replaced)).returncode == 0
    assert (release / "live.txt").read_text() == "the live release" and not Path(replaced).exists()
    # A new version promoted by this deploy, then undone: removed.
    new, staging3 = Path(layout.release("v2")), layout.staging("v2", "n3")
    Path(staging3).mkdir()
    promote = commands.finish_staging(layout, staging3, str(new), layout.replaced("v2", "n3"), "{}")
    assert run(promote, b"").returncode == 0
    assert new.is_dir()
    assert run(commands.rollback(staging3, str(new), layout.replaced("v2", "n3"))).returncode == 0
    assert not new.exists()


def _redeployed_v1(layout: AppLayout, nonce: str) -> tuple[str, Path, str]:
    """v1 live with its old `.env`, then redeployed (same version, new `.env`) by the deploy `nonce`."""
    Path(layout.shared_logs).mkdir(parents=True)
    release = Path(layout.release("v1"))
    release.mkdir(parents=True)
    (release / ".env").write_text("OLD=1\n")
    staging, replaced = layout.staging("v1", nonce), layout.replaced("v1", nonce)
    Path(staging).mkdir()
    assert (
        run(commands.finish_staging(layout, staging, str(release), replaced, "{}"), b"NEW=1\n").returncode
        == 0
    )
    return staging, release, replaced


def test_switching_back_a_same_version_redeploy_puts_the_replaced_release_back(tmp_path: Path) -> None:
    layout = AppLayout("app", root=str(tmp_path))
    staging, release, replaced = _redeployed_v1(layout, "n1")
    assert run(commands.restore_replaced(staging, str(release), replaced)).returncode == 0
    assert (release / ".env").read_text() == "OLD=1\n"
    assert (Path(staging) / ".env").read_text() == "NEW=1\n"  # the cleanup removes it
    assert run(commands.rollback(staging, str(release), replaced)).returncode == 0
    assert (release / ".env").read_text() == "OLD=1\n" and not Path(staging).exists()


def test_when_switching_back_failed_the_deployed_release_is_kept_in_place(tmp_path: Path) -> None:
    layout = AppLayout("app", root=str(tmp_path))
    staging, release, replaced = _redeployed_v1(layout, "n1")
    assert run(commands.restore_replaced(staging, str(release), replaced)).returncode == 0
    assert run(commands.keep_deployed(staging, str(release), replaced)).returncode == 0
    assert (release / ".env").read_text() == "NEW=1\n"
    assert not Path(staging).exists() and not Path(replaced).exists()
    # Not put back before the failure: the same end.
    other = AppLayout("other", root=str(tmp_path))
    staging, release, replaced = _redeployed_v1(other, "n2")
    assert run(commands.keep_deployed(staging, str(release), replaced)).returncode == 0
    assert (release / ".env").read_text() == "NEW=1\n" and not Path(replaced).exists()


def test_preflight_reports_space_and_server() -> None:
    available, installed = commands.parse_preflight("/dev/vda 100 50 2048 50% /\nmissing\n")
    assert (available, installed) == (2048 * 1024, False)


def test_df_parsing() -> None:
    out = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/vda 100 50 2048 50% /\n"
    assert commands.parse_df_available(out) == 2048 * 1024


def test_a_full_disk_is_recognised_in_what_remote_commands_print() -> None:
    from tako.remote.executor import _disk_full

    assert _disk_full("tar: app/zeros.bin: Wrote only 7168 of 10240 bytes\ntar: Exiting with failure status")
    assert _disk_full("cp: error writing 'x': No space left on device")
    assert not _disk_full("tar: app.py: Cannot open: Permission denied")
