// The portal's shell: sign-in, navigation by role, the connection indicator, badges, toasts and the
// new-request sound, around views that each render one page (views/*.js).
//
// One Bookwire client per signed-in tab carries every event. A view subscribes through its `ctx`
// (ctx.on, ctx.every, ctx.client), and everything it subscribed is released when the page changes,
// so a long-open tab holds only the current page's listeners.
import { Bookwire, BookwireError } from "/client/bookwire.js";
import { alertText, fill, h, problemText, toast } from "./dom.js";
import * as session from "./session.js";
import * as sound from "./sound.js";
import { signIn } from "./views/auth.js";
import { bookingPage, bookingsView } from "./views/bookings.js";
import { bookView } from "./views/book.js";
import { inboxView } from "./views/inbox.js";
import { requestsView, resourcesView } from "./views/provider.js";
import { debounce } from "./views/common.js";
import { announceView, dashboardView, poolsView, usersView } from "./views/admin.js";

const NAV = {
  customer: [["/app/book", "Book", bookView], ["/app/bookings", "My bookings", bookingsView],
    ["/app/inbox", "Inbox", inboxView, "inbox"]],
  provider: [["/app/requests", "Requests", requestsView, "requests"], ["/app/bookings", "Bookings", bookingsView],
    ["/app/resources", "Resources", resourcesView], ["/app/inbox", "Inbox", inboxView, "inbox"]],
  admin: [["/app/dashboard", "Dashboard", dashboardView], ["/app/bookings", "Bookings", bookingsView],
    ["/app/users", "Users", usersView], ["/app/pools", "Pools", poolsView],
    ["/app/announcements", "Announcements", announceView], ["/app/inbox", "Inbox", inboxView, "inbox"]],
};
const BOOKING_PAGE = /^\/bookings\/([0-9a-f-]{36})$/;

const main = document.getElementById("main");
let client = null;        // the tab's Bookwire client while signed in
let page = null;          // what the current page subscribed: released on the next page
let expiry = null;        // the timer that ends the session when its token expires
const badges = {};        // name -> the nav badge element

// ---- pages ---------------------------------------------------------------------------------------

/** What one page holds: listeners, timers and extra clients, all released by `close()`. */
class Page {
  constructor() { this.undo = []; this.closed = false; }
  on(type, fn) { this.undo.push(client.on(type, fn)); }
  every(ms, fn) { const t = setInterval(fn, ms); this.undo.push(() => clearInterval(t)); }
  /** A second client for extra channels (e.g. `resource:<id>`), stopped with the page. */
  client(topics) {
    const extra = new Bookwire({ getAccessToken: session.accessToken, topics });
    this.undo.push(() => extra.stop());
    return extra;
  }
  close() { this.closed = true; for (const undo of this.undo.splice(0)) undo(); }
}

function context(user) {
  return {
    user, page, main,
    api: (method, path, body) => api(method, path, body),
    go: navigate,
    refresh: () => render(),
  };
}

/** Call the API; a 401 means the session has ended. */
export async function api(method, path, body) {
  try {
    return await client.request(method, path, body);
  } catch (error) {
    if (error instanceof BookwireError && error.status === 401) signOut("Your session has ended; please sign in again.");
    throw error;
  }
}

async function render() {
  page?.close();
  page = new Page();
  const now = session.current();
  if (!now) return showSignIn();
  const path = location.pathname.replace(/\/+$/, "") || "/app";
  const routes = NAV[now.user.role] || [];
  markNav(path);
  fill(main, h("p", { class: "muted" }, "Loading…"));
  const ctx = context(now.user);
  try {
    const booking = BOOKING_PAGE.exec(path);
    if (booking) return await bookingPage(ctx, booking[1]);
    const route = routes.find(([href]) => href === path);
    if (!route) return navigate(routes[0][0], true);
    document.title = `${route[1]} · Bookwire`;
    await route[2](ctx);
  } catch (error) {
    if (!ctx.page.closed) fill(main, h("div", { class: "card" }, h("h1", {}, "Something went wrong"),
      h("p", { class: "error" }, problemText(error))));
  }
  main.focus({ preventScroll: true });
}

export function navigate(href, replace = false) {
  if (replace) history.replaceState(null, "", href); else history.pushState(null, "", href);
  render();
}

// Links inside the portal change the page without reloading it (the client and its stream stay).
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !(url.pathname.startsWith("/app") || BOOKING_PAGE.test(url.pathname))) return;
  event.preventDefault();
  navigate(url.pathname);
});
window.addEventListener("popstate", () => render());

function markNav(path) {
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === path) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// ---- signed in and out ---------------------------------------------------------------------------

function showSignIn(message = "") {
  fill(document.getElementById("nav"));
  fill(document.getElementById("account"));
  setConnection("offline");
  document.title = "Sign in · Bookwire";
  signIn(main, message, async (answer) => {
    const me = await new Bookwire({ getAccessToken: async () => answer.access_token }).request("GET", "/v1/me");
    session.keep(answer, me);
    start();
  });
}

function signOut(message = "") {
  clearTimeout(expiry);
  page?.close();
  client?.stop();
  client = null;
  session.forget();
  showSignIn(message);
}

function start() {
  const { user, expiresAt } = session.current();
  // No refresh tokens: when the token is about to expire, the person signs in again.
  expiry = setTimeout(() => signOut("Your session has ended; please sign in again."),
    expiresAt - session.EARLY_MS - Date.now());
  client = new Bookwire({ getAccessToken: session.accessToken });
  client.on("state", setConnection);
  client.on("reset", () => render());  // events were missed beyond replay: refetch the page
  fill(document.getElementById("nav"), NAV[user.role].map(([href, label, , badge]) => {
    const link = h("a", { href }, label);
    if (badge) link.append(badges[badge] = h("span", { class: "badge", id: `badge-${badge}`, hidden: true, "aria-label": `new ${label}` }));
    return link;
  }));
  fill(document.getElementById("account"), accountArea(user));
  listenEverywhere(user);
  client.start();
  render();
}

function accountArea(user) {
  const parts = [h("span", { class: "muted who" }, `${user.name} (${user.role})`)];
  if (user.role === "provider") {
    const mute = h("button", { type: "button", class: "secondary", id: "mute", "aria-pressed": String(sound.muted()) },
      sound.muted() ? "Sound off" : "Sound on");
    mute.addEventListener("click", () => {
      sound.setMuted(!sound.muted());
      mute.textContent = sound.muted() ? "Sound off" : "Sound on";
      mute.setAttribute("aria-pressed", String(sound.muted()));
    });
    parts.push(mute);
  }
  parts.push(h("button", { type: "button", class: "secondary", onclick: () => signOut() }, "Sign out"));
  return parts;
}

// ---- what every page shows: indicator, badges, toasts, sound ---------------------------------------

const STATE_LABELS = { live: "Live", polling: "Polling", connecting: "Connecting", offline: "Offline" };
function setConnection(state) {
  const el = document.getElementById("connection");
  el.dataset.state = state;
  el.textContent = STATE_LABELS[state] || state;
}

function setBadge(name, count) {
  const el = badges[name];
  if (!el) return;
  el.hidden = !count;
  el.textContent = count > 99 ? "99+" : String(count);
}

function listenEverywhere(user) {
  const countUnread = debounce(async () => {
    try { setBadge("inbox", (await api("GET", "/v1/conversations/unread-count")).unread); } catch { /* shown later */ }
  }, 300);
  const countRequests = debounce(async () => {
    try {
      const pending = await api("GET", "/v1/bookings?status=pending&limit=100");
      setBadge("requests", pending.items.length + (pending.next_cursor ? 100 : 0));
    } catch { /* shown later */ }
  }, 300);
  countUnread();
  client.on("message.*", countUnread);
  client.on("reset", countUnread);
  if (user.role === "provider") {
    countRequests();
    client.on("booking.*", (event) => {
      countRequests();
      const booking = event.data;
      const isNew = (event.type === "booking.created" || event.type === "booking.reassigned")
        && booking.owner_id === user.id && booking.status === "pending";
      if (isNew) sound.chime();
    });
    client.on("reset", countRequests);
  }
  client.on("notification.created", (event) => toast(event.data.title, event.data.body));
  client.on("announcement", (event) => toast(`📣 ${event.data.title}`, event.data.body));
  client.on("system.alert", (event) => toast("System alert", alertText(event.data), "alert"));
  client.on("message.created", (event) => {
    const message = event.data;
    const here = location.pathname === `/bookings/${message.booking_id}`;
    if (message.sender_id === user.id) return;
    // This device has it: the sender sees "delivered" (reading it, on its page, says "read").
    api("POST", `/v1/bookings/${message.booking_id}/messages/receipts`, { delivered_up_to: message.id }).catch(() => {});
    if (!here) toast("New message", message.body.slice(0, 120));
  });
}

// ---- boot ------------------------------------------------------------------------------------------

sound.unlockOnGesture();
window.addEventListener("unhandledrejection", (event) => {
  if (event.reason instanceof BookwireError) { toast("Error", problemText(event.reason), "alert"); event.preventDefault(); }
});
if (session.current()) start(); else showSignIn();
