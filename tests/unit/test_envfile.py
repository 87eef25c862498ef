"""The release .env format: any value survives a round trip, and sh reads the same values."""

import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tako.config import envfile

NASTY = "quote\" single' dollar $HOME back\\slash `tick` eq=ual spaces  tab\tend é 🐙"


@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), st.text()))
def test_round_trip(values: dict[str, str]) -> None:
    assert envfile.parse(envfile.render(values)) == values


def test_nasty_value_round_trip_with_newline() -> None:
    values = {"A": NASTY + "\nsecond line", "EMPTY": ""}
    assert envfile.parse(envfile.render(values)) == values


def test_shell_reads_the_same_value() -> None:
    text = envfile.render({"A": NASTY})
    out = subprocess.run(
        ["/bin/sh", "-c", 'eval "$1"; printf %s "$A"', "sh", text], capture_output=True, check=True
    ).stdout.decode()
    assert out == NASTY


def test_invalid_name_and_bad_lines() -> None:
    with pytest.raises(envfile.EnvFileError):
        envfile.render({"1BAD": "x"})
    with pytest.raises(envfile.EnvFileError, match="line 2"):
        envfile.parse('A="x"\nnot a line\n')
    with pytest.raises(envfile.EnvFileError, match="missing closing quote"):
        envfile.parse('A="open\n')


def test_errors_never_show_values() -> None:
    with pytest.raises(envfile.EnvFileError) as info:
        envfile.parse('SECRET="supersecret" trailing\n')
    assert "supersecret" not in str(info.value)
