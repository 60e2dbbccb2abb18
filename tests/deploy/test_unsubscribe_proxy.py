"""deploy/proxy: the reverse-proxy snippets for the unsubscribe endpoint agree with the
endpoint's limits and with the copy in docs/suppression.md."""

from __future__ import annotations

import re
from pathlib import Path

from bulksend.inbound.unsubscribe import MAX_BODY, EndpointLimits

ROOT = Path(__file__).parents[2]
PROXY = ROOT / "deploy" / "proxy"


def test_the_nginx_snippet_is_the_one_the_docs_show() -> None:
    snippet = (PROXY / "unsubscribe.nginx.conf").read_text()
    location = snippet[snippet.index("location = /unsubscribe {") :]
    assert location in (ROOT / "docs" / "suppression.md").read_text()


def test_the_proxies_keep_the_endpoints_limits() -> None:
    nginx = (PROXY / "unsubscribe.nginx.conf").read_text()
    size = re.search(r"client_max_body_size (\d+)k;", nginx)
    assert size is not None
    assert int(size[1]) * 1024 == MAX_BODY
    read = re.search(r"proxy_read_timeout (\d+)s;", nginx)
    assert read is not None
    assert int(read[1]) > EndpointLimits().timeout  # the endpoint answers first
    caddy = (PROXY / "Caddyfile").read_text()
    size = re.search(r"max_size (\d+)KiB", caddy)
    assert size is not None
    assert int(size[1]) * 1024 == MAX_BODY
    for text in (nginx, caddy):
        assert "127.0.0.1:8080" in text  # unsubscribe-server's default port, on loopback
