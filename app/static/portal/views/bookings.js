// Bookings: the list (everyone's own, live) and a booking's page (details, actions, history and
// the conversation with typing and read ticks).
import { empty, fill, form, h, money, problemText, select, statusBadge, when } from "../dom.js";
import { actionButtons, countdown, deadlineOf, debounce, resourceDirectory, tickCountdowns } from "./common.js";

const STATUSES = ["pending", "confirmed", "checked_in", "completed", "rejected", "cancelled", "expired"];

// ---- the list ------------------------------------------------------------------------------------

export async function bookingsView(ctx) {
  const status = new URLSearchParams(location.search).get("status") || "";
  const [resources, page] = await Promise.all([
    resourceDirectory(ctx, ctx.user.role === "provider" ? `&owner_id=${ctx.user.id}` : ""),
    ctx.api("GET", `/v1/bookings?limit=100${status ? `&status=${status}` : ""}`),
  ]);
  const body = h("tbody");
  const table = h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["When", "Resource", "Seats", "Price", "Status", ""].map((t) => h("th", { scope: "col" }, t)))),
    body));
  const none = empty(ctx.user.role === "customer" ? "No bookings yet. Find something under Book." : "No bookings yet.");
  const filter = select("Status", "status", [["", "All"], ...STATUSES.map((s) => [s, s.replace("_", " ")])], status);
  filter.querySelector("select").addEventListener("change", (e) =>
    ctx.go(`/app/bookings${e.target.value ? `?status=${e.target.value}` : ""}`));

  async function row(booking) {
    const resource = await resources.get(booking.resource_id);
    return h("tr", { dataset: { bookingId: booking.id, version: String(booking.version) } },
      h("td", {}, when(booking.starts_at)),
      h("td", {}, resource ? resource.name : "A resource"),
      h("td", {}, `${booking.seats} seat${booking.seats === 1 ? "" : "s"}`),
      h("td", { class: "price" }, money(booking.price_cents, booking.currency)),
      h("td", {}, statusBadge(booking.status)),
      h("td", {}, h("div", { class: "row" },
        h("a", { href: `/bookings/${booking.id}` }, "Open"),
        actionButtons(ctx, booking, (after) => place(after, true)))));
  }

  // A booking shows when it matches the filter and the person still sees it (a pooled request that
  // moved on leaves its previous owner's list). Events older than what is shown are ignored.
  async function place(booking, flash) {
    const old = body.querySelector(`tr[data-booking-id="${booking.id}"]`);
    if (old && Number(old.dataset.version) > booking.version) return;
    const mine = ctx.user.role === "admin" || booking.customer_id === ctx.user.id || booking.owner_id === ctx.user.id;
    const keep = mine && (!status || booking.status === status);
    if (!keep) { old?.remove(); none.hidden = body.children.length > 0; return; }
    const fresh = await row(booking);
    if (flash) fresh.classList.add("flash");
    if (old) old.replaceWith(fresh); else body.prepend(fresh);
    none.hidden = true;
  }

  for (const booking of page.items) body.append(await row(booking));
  none.hidden = page.items.length > 0;
  fill(ctx.main, h("div", { class: "spread" }, h("h1", {}, ctx.user.role === "customer" ? "My bookings" : "Bookings"), filter),
    table, none);
  ctx.page.on("booking.*", (event) => place(event.data, true));
}

// ---- a booking's page ----------------------------------------------------------------------------

export async function bookingPage(ctx, id) {
  let booking = await ctx.api("GET", `/v1/bookings/${id}`);
  let resource = await resourceOf(ctx, booking.resource_id);
  document.title = `${resource ? resource.name : "Booking"} · Bookwire`;
  const details = h("section", { class: "card", "aria-labelledby": "booking-title" });
  const history = h("ol", { class: "history" });
  const moved = h("p", { class: "notice", hidden: true, role: "status" });
  const conversation = await conversationPanel(ctx, () => booking);

  function drawDetails() {
    fill(details,
      h("div", { class: "spread" },
        h("h1", { id: "booking-title" }, resource ? resource.name : "Booking"),
        h("span", { id: "booking-status" }, statusBadge(booking.status))),
      h("dl", { class: "fields" },
        h("div", {}, h("dt", { class: "muted" }, "Starts"), h("dd", {}, when(booking.starts_at))),
        h("div", {}, h("dt", { class: "muted" }, "Ends"), h("dd", {}, when(booking.ends_at))),
        h("div", {}, h("dt", { class: "muted" }, "Seats"), h("dd", {}, String(booking.seats))),
        h("div", {}, h("dt", { class: "muted" }, "Price"), h("dd", { class: "price" }, money(booking.price_cents, booking.currency))),
        booking.status === "pending" ? h("div", {}, h("dt", { class: "muted" }, "Time left to answer"),
          h("dd", { id: "time-left" }, countdown(deadlineOf(booking, resource)))) : null,
        booking.notes ? h("div", {}, h("dt", { class: "muted" }, "Notes"), h("dd", { class: "message" }, booking.notes)) : null),
      h("div", { class: "row" }, actionButtons(ctx, booking, (after) => { booking = after; drawDetails(); loadHistory(); })));
  }

  async function loadHistory() {
    const entries = (await ctx.api("GET", `/v1/bookings/${id}/history?limit=100`)).items;
    fill(history, entries.map((e) => h("li", {}, h("strong", {}, e.action), ` → ${e.to_status.replace("_", " ")} · ${when(e.at)}`,
      e.reason ? ` · “${e.reason}”` : "")));
  }

  drawDetails();
  await loadHistory();
  fill(ctx.main, h("p", {}, h("a", { href: "/app/bookings" }, "← All bookings")), moved,
    h("div", { class: "grid" }, h("div", {}, details, h("section", { class: "card" }, h("h2", {}, "History"), history)),
      conversation.element));
  tickCountdowns(ctx);

  ctx.page.on("booking.*", async (event) => {
    if (event.data.id !== id || event.data.version <= booking.version) return;
    booking = event.data;
    if (event.type === "booking.reassigned") resource = await resourceOf(ctx, booking.resource_id);
    const stillMine = ctx.user.role !== "provider" || booking.owner_id === ctx.user.id;
    if (!stillMine) {
      moved.textContent = "This request has moved on to another provider; it is no longer yours to answer.";
      moved.hidden = false;
      conversation.element.hidden = true;
    }
    drawDetails();
    loadHistory().catch(() => {});
  });
}

async function resourceOf(ctx, id) {
  try { return await ctx.api("GET", `/v1/resources/${id}`); } catch { return null; }
}

// ---- the conversation ------------------------------------------------------------------------------

const TYPING_EVERY_MS = 2000; // the API publishes at most one typing event per 2 s anyway

async function conversationPanel(ctx, currentBooking) {
  const id = currentBooking().id;
  const list = h("div", { class: "messages", id: "messages", role: "log", "aria-label": "Messages" });
  const typing = h("p", { class: "typing", id: "typing", "aria-live": "polite" });
  const element = h("section", { class: "card", "aria-labelledby": "conversation-title" },
    h("h2", { id: "conversation-title" }, "Conversation"), list, typing);
  let messages = [];
  let typingTimer = null, lastTyping = 0;

  function who(userId) {
    const booking = currentBooking();
    if (userId === ctx.user.id) return "You";
    if (userId === booking.customer_id) return "Customer";
    if (userId === booking.owner_id) return "Provider";
    return "Support";
  }

  function ticks(message) {
    if (message.sender_id !== ctx.user.id) return null;
    const state = message.read_at ? "read" : message.delivered_at ? "delivered" : "sent";
    const text = { read: "✓✓ Read", delivered: "✓✓ Delivered", sent: "✓ Sent" }[state];
    return h("span", { class: "ticks", dataset: { ticks: state } }, ` · ${text}`);
  }

  function draw() {
    fill(list, messages.length ? messages.map((m) => h("div", {
      class: `message${m.sender_id === ctx.user.id ? " mine" : ""}`, dataset: { messageId: m.id } },
    m.body, h("span", { class: "meta" }, `${who(m.sender_id)} · ${when(m.created_at)}`, ticks(m))))
      : empty("No messages yet. Say hello."));
    list.scrollTop = list.scrollHeight;
  }

  async function load() {
    messages = (await ctx.api("GET", `/v1/bookings/${id}/messages?limit=50`)).items.reverse();
    draw();
    markRead();
  }

  // Everything from others that this page shows has been read, while the page is visible.
  function markRead() {
    const theirs = messages.filter((m) => m.sender_id !== ctx.user.id);
    if (!theirs.length || document.visibilityState !== "visible") return;
    ctx.api("POST", `/v1/bookings/${id}/messages/receipts`, { read_up_to: theirs[theirs.length - 1].id }).catch(() => {});
  }

  function add(message) {
    if (messages.some((m) => m.id === message.id)) return;
    messages.push(message);
    draw();
  }

  const composer = form([
    h("label", {}, "Message", h("textarea", { name: "body", id: "message-body", required: true, maxlength: 4000,
      oninput: () => {
        if (Date.now() - lastTyping < TYPING_EVERY_MS) return;
        lastTyping = Date.now();
        ctx.api("POST", `/v1/bookings/${id}/typing`).catch(() => {});
      } })),
  ], "Send", async (values, el) => {
    const body = values.body.trim();
    if (!body) throw new Error("Write a message first.");
    add(await ctx.api("POST", `/v1/bookings/${id}/messages`, { body, client_id: crypto.randomUUID() }));
    el.reset();
  }, { id: "composer" });
  element.append(composer);

  const refreshTicks = debounce(() => load().catch(() => {}), 150);
  ctx.page.on("message.created", (event) => {
    if (event.data.booking_id !== id) return;
    add(event.data);
    if (event.data.sender_id !== ctx.user.id) { typing.textContent = ""; markRead(); }
  });
  ctx.page.on("message.receipt", (event) => {
    if (event.data.booking_id === id && event.data.user_id !== ctx.user.id) refreshTicks();
  });
  ctx.page.on("conversation.typing", (event) => {
    if (event.data.booking_id !== id || event.data.user_id === ctx.user.id) return;
    typing.textContent = `${who(event.data.user_id)} is typing…`;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => { typing.textContent = ""; }, Math.max(1000, Date.parse(event.data.until) - Date.now()));
  });
  const onVisible = () => markRead();
  document.addEventListener("visibilitychange", onVisible);
  ctx.page.undo.push(() => { document.removeEventListener("visibilitychange", onVisible); clearTimeout(typingTimer); });

  try {
    await load();
  } catch (error) {
    fill(list, h("p", { class: "error" }, problemText(error)));
  }
  return { element };
}
