"""The light answer the send path reads instead of an httpx.Response."""

import httpx
from multidict import CIMultiDict, CIMultiDictProxy

from tasks.providers.base import PageConnection, ProviderKind
from tasks.providers.http import Answer
from tasks.providers.whatsapp import WhatsAppAdapter

URL = httpx.URL("https://graph.example/v21.0/1055/messages")


def answer(status: int, body: bytes, **headers: str) -> Answer:
    return Answer(status, CIMultiDictProxy(CIMultiDict(headers)), body, URL)


def test_text_follows_the_declared_charset_and_survives_unknown_ones() -> None:
    latin = answer(200, "olá".encode("latin-1"), **{"Content-Type": "text/plain; charset=ISO-8859-1"})
    assert latin.text == "olá"
    assert answer(200, "olá".encode(), **{"content-type": "text/plain"}).text == "olá"
    assert answer(200, b"ol\xe1", **{"content-type": "text/plain; charset=klingon"}).text == "ol\ufffd"


def test_headers_are_case_insensitive_and_redirects_need_a_location() -> None:
    assert answer(429, b"", **{"Retry-After": "7"}).headers.get("retry-after") == "7"
    assert answer(307, b"", Location="/elsewhere").is_redirect
    assert not answer(307, b"").is_redirect
    assert answer(204, b"").is_success and not answer(302, b"").is_success


def test_a_credential_echoed_in_an_answer_is_blanked() -> None:
    connection = PageConnection(
        kind=ProviderKind.WHATSAPP,
        base_url="https://graph.facebook.com",
        credentials={"access_token": "wa-token-123456"},
        settings={"phone_number_id": "1055"},
    )
    adapter = WhatsAppAdapter(connection)
    scrubbed = adapter._scrubbed(answer(400, b'{"error": "bad token wa-token-123456"}', **{"X-Id": "1"}))
    assert isinstance(scrubbed, Answer) and b"wa-token-123456" not in scrubbed.content
    assert scrubbed.status_code == 400 and scrubbed.headers.get("x-id") == "1" and scrubbed.url == URL
