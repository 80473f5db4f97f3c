"""`inbound.request_headers` reads the environ as werkzeug's `EnvironHeaders` does, names lower-cased."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import EnvironHeaders

from app.inbound import request_headers

NAMES = st.sampled_from(
    ["HTTP_X_A", "HTTP_AUTHORIZATION", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "CONTENT_TYPE", "CONTENT_LENGTH"]
    + ["HTTP_X_REQUEST_ID", "HTTP_ACCEPT_ENCODING", "PATH_INFO", "wsgi.input", "REQUEST_METHOD", "HTTP_"]
)


@given(st.dictionaries(NAMES, st.sampled_from(["", "x", "application/json", "12", "a b"]), max_size=8))
def test_same_as_werkzeug(environ):
    expected = {k.lower(): v for k, v in EnvironHeaders(environ).items()}
    assert request_headers(environ) == expected
