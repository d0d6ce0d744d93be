"""Information exposure and log injection (security review findings 8, 9 and 10)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("method", "path"), [("GET", "/healthz"), ("POST", "/oauth/token")])
def test_request_id_with_a_trailing_newline_is_not_echoed(http, method, path):
    # Set in the environ: werkzeug's test client itself refuses a header value with a newline.
    response = http.open(path, method=method, environ_overrides={"HTTP_X_REQUEST_ID": "abc\n"})
    assert response.headers["X-Request-ID"] != "abc\n"
    assert len(response.headers["X-Request-ID"]) == 32
