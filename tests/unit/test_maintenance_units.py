"""Maintenance mode and error pages, the parts without a server: the allow list in tako.toml and on the
wire, the maintenance answer's client check, the default page, and reading a release's pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tako.config.project import load_project
from tako.errors import ConfigError, ProtocolError, ReleaseError
from tako.protocol import Deploy, Maintenance, decode_request, encode_request
from tako.protocol.client_networks import parse_networks
from tako.server.apps.release_pages import MAX_PAGE_BYTES, read_pages
from tako.server.proxy.maintenance import MaintenanceAnswer, default_maintenance_page


def project_with(tmp_path: Path, allow: str) -> Path:
    text = f'[tako]\nname = "shop"\nstart = "x"\nmaintenance_allow = {allow}\n'
    (tmp_path / "tako.toml").write_text(text + '\n[envs.production]\nroute = "a.test"\n')
    return tmp_path


def test_tako_toml_takes_ipv4_ipv6_and_cidr_entries(tmp_path: Path) -> None:
    entries = '["203.0.113.7", "10.0.0.0/8", "2001:db8::1", "2001:db8::/32"]'
    project = load_project(project_with(tmp_path, entries))
    assert project.maintenance_allow == ("203.0.113.7", "10.0.0.0/8", "2001:db8::1", "2001:db8::/32")


def test_a_bad_entry_in_tako_toml_names_file_key_line_and_entry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_project(project_with(tmp_path, '["10.0.0.0/8", "10.0.0.300"]'))
    text = str(caught.value)
    assert "tako.toml:4" in text and "tako.maintenance_allow[1]" in text
    assert "'10.0.0.300' is not an IP address or CIDR range" in text
    with pytest.raises(ConfigError, match="expected a list of strings"):
        load_project(project_with(tmp_path, '"10.0.0.1"'))


def test_the_wire_refuses_bad_entries_and_long_messages() -> None:
    with pytest.raises(ProtocolError, match="'nope' is not an IP address"):
        Maintenance(app="shop", on=True, allow=("nope",))
    with pytest.raises(ProtocolError, match="at most 2000"):
        Maintenance(app="shop", on=True, message="x" * 2001)
    with pytest.raises(ProtocolError, match="'x/y' is not an IP address"):
        Deploy(app="shop", version="v1", path="/p", routes=("a.test",), maintenance_allow=("x/y",))


def test_a_field_left_at_none_is_not_sent_so_older_servers_understand_the_request() -> None:
    line = encode_request(Deploy(app="shop", version="v1", path="/p", routes=("a.test",)))
    assert "maintenance_allow" not in json.loads(line)
    assert decode_request(line) == Deploy(app="shop", version="v1", path="/p", routes=("a.test",))
    request = Maintenance(app="shop", on=True, allow=("10.0.0.0/8",))
    assert decode_request(encode_request(request)) == request


def test_the_answer_lets_listed_clients_through_ipv4_ipv6_and_mapped() -> None:
    answer = MaintenanceAnswer(b"<p>x</p>", parse_networks(["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]))
    assert answer.admits(b"10.1.2.3") and answer.admits(b"192.0.2.1") and answer.admits(b"2001:db8::5")
    assert not answer.admits(b"192.0.2.2") and not answer.admits(b"2001:db9::1")
    assert not answer.admits(b"unknown")
    assert not MaintenanceAnswer(b"", ()).admits(b"10.1.2.3")
    head = answer.answer(close=False, head_only=True)
    assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 30\r\n" in head and head.endswith(b"\r\n\r\n")
    assert answer.answer(close=True, head_only=False).endswith(b"\r\n\r\n<p>x</p>")


def test_the_default_page_escapes_the_message() -> None:
    page = default_maintenance_page("<script>alert(1)</script> & more").decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page and "<script>" not in page
    assert "down for maintenance" in default_maintenance_page("").decode()


def test_a_release_s_pages_are_read_bounded_and_without_following_links(tmp_path: Path) -> None:
    assert read_pages(tmp_path).errors == {} and read_pages(tmp_path).maintenance is None
    (tmp_path / "maintenance.html").write_text("<p>m</p>")
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "504.html").write_text("<p>slow</p>")
    pages = read_pages(tmp_path)
    assert pages.maintenance == b"<p>m</p>" and pages.errors == {504: b"<p>slow</p>"}

    (tmp_path / "errors" / "502.html").write_bytes(b"x" * (MAX_PAGE_BYTES + 1))
    with pytest.raises(ReleaseError, match="at most 65536 bytes"):
        read_pages(tmp_path)
    (tmp_path / "errors" / "502.html").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ReleaseError, match="not UTF-8"):
        read_pages(tmp_path)
    (tmp_path / "errors" / "502.html").unlink()
    (tmp_path / "errors" / "502.html").symlink_to(tmp_path / "maintenance.html")
    with pytest.raises(ReleaseError, match="links are not followed"):
        read_pages(tmp_path)
