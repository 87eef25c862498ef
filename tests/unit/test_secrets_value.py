"""The Secret type never shows its value except through .reveal()."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import traceback
from dataclasses import dataclass

import pytest

from tako.secrets import REDACTED, Secret

VALUE = "hunter2-very-secret"


def test_str_repr_format_are_redacted() -> None:
    s = Secret(VALUE)
    assert str(s) == REDACTED
    assert repr(s) == REDACTED
    assert f"{s}" == REDACTED
    assert f"{s!r}" == REDACTED
    assert f"{s:>20}" == REDACTED.rjust(20)
    assert "%s %r" % (s, s) == f"{REDACTED} {REDACTED}"  # noqa: UP031 - the old styles must redact too
    assert "{}".format(s) == REDACTED  # noqa: UP032
    assert VALUE not in repr([s, {"k": s}, (s,)])


def test_reveal_is_the_only_way_out() -> None:
    s = Secret(VALUE)
    assert s.reveal() == VALUE
    assert not hasattr(s, "__dict__")
    assert not hasattr(s, "_value")
    assert VALUE not in repr(vars(type(s)))


def test_not_json_serialisable_and_not_a_str() -> None:
    s = Secret(VALUE)
    with pytest.raises(TypeError):
        json.dumps({"API_KEY": s})
    with pytest.raises(TypeError):
        _ = "prefix" + s  # type: ignore[operator,unused-ignore]
    with pytest.raises(TypeError):
        "".join([s])  # type: ignore[list-item,unused-ignore]
    assert not isinstance(s, str)


def test_not_picklable_copy_keeps_identity() -> None:
    s = Secret(VALUE)
    with pytest.raises(TypeError):
        pickle.dumps(s)
    assert copy.copy(s) is s
    assert copy.deepcopy(s) is s


def test_equality_by_value_but_unhashable() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    with pytest.raises(TypeError):
        hash(Secret("a"))


def test_inside_dataclass_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    @dataclass
    class Holder:
        token: Secret

    h = Holder(Secret(VALUE))
    assert VALUE not in repr(h)
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("token=%s holder=%r", h.token, h)
    assert VALUE not in caplog.text


def test_traceback_does_not_show_value() -> None:
    s = Secret(VALUE)
    try:
        raise ValueError(f"bad {s}")
    except ValueError:
        text = traceback.format_exc()
    assert VALUE not in text
    assert REDACTED in text


def test_only_wraps_str() -> None:
    with pytest.raises(TypeError):
        Secret(b"bytes")  # type: ignore[arg-type,unused-ignore]
