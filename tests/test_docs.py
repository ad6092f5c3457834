"""The interactive API page is served from the package's own assets and reads /openapi.json."""

from __future__ import annotations


def test_docs_page_renders_the_openapi_document(http) -> None:
    page = http.get("/docs/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '"/openapi.json"' in html and "swagger-ui-bundle.js" in html
    assert "https://" not in html.split("<body>")[0], "assets must not come from a CDN"
    bundle = http.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.data) > 100_000
    assert http.get("/openapi.json").get_json()["openapi"] == "3.1.0"
