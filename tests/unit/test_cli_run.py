"""`tako run`: which server it picks and the remote command it sends."""

from __future__ import annotations

import shlex

import pytest

from tako.cli.run import pick_server, remote_command
from tako.errors import UsageError
from tako.remote.connection import ServerAddress

SERVERS = [ServerAddress("web1", "10.0.0.1"), ServerAddress("web2", "10.0.0.2")]


def test_the_first_server_of_the_env_unless_one_is_named() -> None:
    assert pick_server(SERVERS, None, "production").name == "web1"
    assert pick_server(SERVERS, "web2", "production").name == "web2"


def test_a_server_outside_the_env_is_refused_naming_its_servers() -> None:
    with pytest.raises(UsageError) as caught:
        pick_server(SERVERS, "db1", "staging")
    assert "server 'db1' is not a server of environment 'staging'" in caught.value.message
    assert "web1, web2" in str(caught.value.hint)


def test_each_argument_arrives_as_one_word_and_the_shell_is_replaced() -> None:
    argv = ("sh", "-c", 'echo "$HOME"; exit 7', "a b", "--", "'")
    rendered = remote_command("shop", argv).render()
    assert shlex.split(rendered) == ["exec", "tako-server", "run-as-app", "shop", "--", *argv]
