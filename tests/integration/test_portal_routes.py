"""The portal's pages and files over HTTP, and the admin's dashboard counts (`GET /v1/admin/stats`):
`/` leads to `/app`; every portal path and `/bookings/<id>` (the link in every email) is the page
shell with a strict Content-Security-Policy, whatever its query string; the shell's scripts and
every module they import are served; nothing outside the assets folder is."""

from __future__ import annotations

import re
import uuid

from conftest import Cast, Server, assert_problem, make_booking, make_resource

PAGES = ["/app", "/app/", "/app/bookings?status=pending", "/app/anything/at/all", f"/bookings/{uuid.uuid4()}"]
IMPORT = re.compile(r"""(?:import|from)\s*(?:[\w{}\s,*]+from\s*)?["']([^"']+\.js)["']""")


def test_home_leads_to_the_portal(server: Server) -> None:
    with server.client() as http:
        answer = http.get("/")
    assert answer.status_code == 302 and answer.headers["location"] == "/app"


def test_every_portal_path_is_the_shell_with_a_strict_policy(server: Server) -> None:
    with server.client() as http:
        for path in PAGES:
            answer = http.get(path)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.headers["content-type"].startswith("text/html"), path
            assert '<script type="module" src="/assets/app.js">' in answer.text
            policy = answer.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, policy
            assert answer.headers["x-content-type-options"] == "nosniff"


def test_a_booking_page_needs_a_uuid(server: Server) -> None:
    with server.client() as http:
        assert_problem(http.get("/bookings/not-a-booking"), 404)


def test_the_shell_loads_and_every_module_it_imports_is_served(server: Server) -> None:
    """Follows the imports from `/assets/app.js`: a module missing from the package fails here."""
    with server.client() as http:
        assert http.get("/assets/portal.css").headers["content-type"].startswith("text/css")
        pending, seen = ["/assets/app.js"], set()
        while pending:
            path = pending.pop()
            if path in seen:
                continue
            seen.add(path)
            answer = http.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].startswith("text/javascript"), path
            base = path.rsplit("/", 1)[0]
            for target in IMPORT.findall(answer.text):
                pending.append(target if target.startswith("/") else _join(base, target))
    assert {"/assets/app.js", "/client/bookwire.js", "/assets/views/bookings.js"} <= seen, seen


def _join(base: str, relative: str) -> str:
    parts = base.split("/")
    for part in relative.split("/"):
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def test_nothing_outside_the_assets_folder_is_served(server: Server) -> None:
    with server.client() as http:
        for path in ["/assets/../portal.py", "/assets/%2e%2e/portal.py", "/assets/%2e%2e/%2e%2e/settings.py",
                     "/assets/nothing.js", "/assets/"]:
            answer = http.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert answer.headers["content-type"] == "application/problem+json", path


def test_admin_stats_count_bookings_and_emails_by_status(server: Server, cast: Cast) -> None:
    before = cast.admin.http.get("/v1/admin/stats")
    assert before.status_code == 200, before.text
    counts = before.json()
    assert set(counts["bookings"]) == {"pending", "confirmed", "rejected", "cancelled", "expired", "checked_in",
                                       "completed"}
    assert set(counts["emails"]) == {"queued", "sending", "sent", "failed"}
    resource = make_resource(cast.owner)
    booking = make_booking(cast.customer, resource["id"])
    assert cast.owner.http.post(f"/v1/bookings/{booking['id']}/reject").status_code == 200
    make_booking(cast.customer, resource["id"])
    after = cast.admin.http.get("/v1/admin/stats").json()["bookings"]
    assert after["pending"] == counts["bookings"]["pending"] + 1
    assert after["rejected"] == counts["bookings"]["rejected"] + 1


def test_admin_stats_are_for_admins_only(server: Server, cast: Cast) -> None:
    for actor in (cast.customer, cast.owner):
        assert_problem(actor.http.get("/v1/admin/stats"), 403)
    with server.client() as http:
        assert_problem(http.get("/v1/admin/stats"), 401)
