"""The /etc snapshot: only world-readable entries, refreshed when the host changes."""

import os

from sandboxes.providers.local.etc import etc_snapshot


def make_host_etc(tmp_path):
    etc = tmp_path / "etc"
    (etc / "ssl" / "certs").mkdir(parents=True)
    (etc / "ssl" / "private").mkdir(mode=0o700)
    (etc / "ssl" / "private" / "key.pem").write_text("secret")
    (etc / "ssl" / "certs" / "ca.pem").write_text("CA")
    os.symlink("/usr/share/ca.pem", etc / "ssl" / "certs" / "link.pem")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (tmp_path / "real-resolv").write_text("nameserver 10.0.0.1\n")
    os.symlink(tmp_path / "real-resolv", etc / "resolv.conf")
    (etc / "os-release").write_text("ID=test\n")
    (etc / "os-release").chmod(0o600)  # not world-readable: never copied
    return etc


def test_snapshot_copies_world_readable_entries_only(tmp_path):
    snapshot = etc_snapshot(tmp_path / "cache", str(make_host_etc(tmp_path)))
    assert (snapshot / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert (snapshot / "ssl" / "certs" / "ca.pem").read_text() == "CA"
    assert not (snapshot / "ssl" / "private").exists()
    assert not (snapshot / "os-release").exists()
    # A top-level link is copied as its target; nested links stay links into /usr.
    assert not (snapshot / "resolv.conf").is_symlink()
    assert (snapshot / "resolv.conf").read_text() == "nameserver 10.0.0.1\n"
    assert os.readlink(snapshot / "ssl" / "certs" / "link.pem") == "/usr/share/ca.pem"
    assert (snapshot / "passwd").exists() and (snapshot / "group").exists()  # mount points


def test_snapshot_is_reused_until_the_host_changes(tmp_path):
    host = make_host_etc(tmp_path)
    cache = tmp_path / "cache"
    first = etc_snapshot(cache, str(host))
    assert etc_snapshot(cache, str(host)) == first
    (host / "hosts").write_text("127.0.0.1 localhost changed\n")
    os.utime(host / "hosts", ns=(1, 1))
    changed = etc_snapshot(cache, str(host))
    assert changed != first
    assert (changed / "hosts").read_text() == "127.0.0.1 localhost changed\n"
    (host / "ssl" / "certs" / "new.pem").write_text("new CA")  # a change deep inside a directory
    deeper = etc_snapshot(cache, str(host))
    assert (deeper / "ssl" / "certs" / "new.pem").read_text() == "new CA"
    assert first.is_dir()  # a running sandbox may still have it bound
