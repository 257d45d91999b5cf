// An admin's pages: the live dashboard, announcements, users and pools.
import { alertText, empty, field, fill, form, h, select, toast, when } from "../dom.js";
import { debounce } from "./common.js";

const PRESENCE_EVERY_MS = 5000;
const RATE_WINDOW_MS = 60_000;

function tile(key, label, value) {
  return h("div", { class: "tile", dataset: { tile: key } }, h("span", { class: "n" }, String(value)), h("span", { class: "k" }, label));
}

function tiles(prefix, counts, labels = {}) {
  return h("div", { class: "tiles" }, Object.entries(counts).map(([key, n]) =>
    tile(`${prefix}.${key}`, labels[key] || key.replace("_", " "), n)));
}

/** The dashboard. Bookings and emails by status come from `GET /v1/admin/stats`, read again shortly
 * after each booking event; who is online and the open streams from `GET /v1/admin/presence` every
 * 5 s (both cluster-wide); the event rate is what this page's own stream received in the last
 * minute — an admin's channels carry every booking, resource and alert event. */
export async function dashboardView(ctx) {
  const bookings = h("section", { "aria-labelledby": "t-bookings" });
  const people = h("section", { "aria-labelledby": "t-people" });
  const emails = h("section", { "aria-labelledby": "t-emails" });
  const rate = h("span", { class: "n", id: "event-rate" }, "0");
  const alerts = h("ul", { id: "alerts" });
  const arrivals = [];

  async function drawStats() {
    const stats = await ctx.api("GET", "/v1/admin/stats");
    fill(bookings, h("h2", { id: "t-bookings" }, "Bookings by status"), tiles("bookings", stats.bookings));
    fill(emails, h("h2", { id: "t-emails" }, "Email deliveries"), tiles("emails", stats.emails),
      h("p", { class: "muted" }, "Webhook deliveries: none configured."));
  }
  async function drawPresence() {
    const presence = await ctx.api("GET", "/v1/admin/presence");
    fill(people, h("h2", { id: "t-people" }, "Online now"), tiles("online", presence.online),
      tiles("streams", presence.streams, { sse: "SSE streams", poll: "long-polls" }));
  }
  function drawRate() {
    while (arrivals.length && arrivals[0] < Date.now() - RATE_WINDOW_MS) arrivals.shift();
    rate.textContent = String(arrivals.length);
  }

  await Promise.all([drawStats(), drawPresence()]);
  fill(ctx.main, h("h1", {}, "Dashboard"), bookings, people,
    h("section", {}, h("h2", {}, "Events"), h("div", { class: "tiles" },
      h("div", { class: "tile" }, rate, h("span", { class: "k" }, "events in the last minute")))),
    emails, h("section", {}, h("h2", {}, "System alerts"), alerts, empty("No alerts since this page opened.")));

  const restat = debounce(() => drawStats().catch(() => {}), 250);
  ctx.page.on("*", (event) => { if (event.id) arrivals.push(Date.now()); drawRate(); });
  ctx.page.on("booking.*", restat);
  ctx.page.on("reset", restat);
  ctx.page.on("system.alert", (event) => {
    ctx.main.querySelector(".empty")?.remove();
    alerts.prepend(h("li", { class: "error" }, `${when(event.occurred_at)} — ${alertText(event.data)}`));
    restat();
  });
  ctx.page.every(PRESENCE_EVERY_MS, () => { drawPresence().catch(() => {}); drawRate(); });
}

export async function announceView(ctx) {
  fill(ctx.main, h("h1", {}, "Announcements"), h("section", { class: "card" }, form([
    field("Title", { name: "title", required: true, maxlength: 200 }),
    field("Message", { name: "body", required: true }, "textarea"),
    select("To", "audience", [["all", "everyone"], ["customer", "customers"], ["provider", "providers"], ["admin", "admins"]], "all"),
  ], "Announce", async (values, el) => {
    await ctx.api("POST", "/v1/admin/announcements", values);
    toast("Announced", values.title);
    el.reset();
  })));
}

export async function usersView(ctx) {
  const users = await ctx.api("GET", "/v1/users?limit=100");
  const body = h("tbody");
  function row(user) {
    return h("tr", { dataset: { userId: user.id } }, h("td", {}, user.name), h("td", {}, user.email), h("td", {}, user.role),
      h("td", {}, user.active ? "active" : "deactivated"), h("td", {}, user.id === ctx.user.id ? "" :
        h("button", { type: "button", class: user.active ? "danger" : "", onclick: async () => {
          const changed = await ctx.api("PATCH", `/v1/users/${user.id}`, { active: !user.active });
          body.querySelector(`[data-user-id="${user.id}"]`).replaceWith(row(changed));
        } }, user.active ? "Deactivate" : "Reactivate")));
  }
  users.items.forEach((u) => body.append(row(u)));
  fill(ctx.main, h("h1", {}, "Users"), h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["Name", "Email", "Role", "Status", ""].map((t) => h("th", { scope: "col" }, t)))), body)),
  users.next_cursor ? h("p", { class: "muted" }, "Showing the first 100 users.") : null);
}

export async function poolsView(ctx) {
  const pools = await ctx.api("GET", "/v1/pools?limit=100");
  const list = h("div", { class: "grid", id: "pool-list" });
  function card(pool) {
    return h("article", { class: "card", dataset: { poolId: pool.id } },
      h("div", { class: "spread" }, h("h2", {}, pool.name), h("span", { class: "muted" }, pool.active ? "active" : "inactive")),
      pool.description ? h("p", {}, pool.description) : null,
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", onclick: async () => {
          const changed = await ctx.api("PATCH", `/v1/pools/${pool.id}`, { active: !pool.active });
          list.querySelector(`[data-pool-id="${pool.id}"]`).replaceWith(card(changed));
        } }, pool.active ? "Deactivate" : "Activate"),
        h("button", { type: "button", class: "danger", onclick: async () => {
          await ctx.api("DELETE", `/v1/pools/${pool.id}`);
          list.querySelector(`[data-pool-id="${pool.id}"]`)?.remove();
        } }, "Delete")));
  }
  fill(list, pools.items.length ? pools.items.map(card) : empty("No pools yet."));
  fill(ctx.main, h("h1", {}, "Pools"), list, h("section", { class: "card" }, h("h2", {}, "New pool"), form([
    field("Name", { name: "name", required: true, maxlength: 200 }),
    field("Description", { name: "description" }, "textarea"),
  ], "Create pool", async (values, el) => {
    const created = await ctx.api("POST", "/v1/pools", values);
    list.querySelector(".empty")?.remove();
    list.prepend(card(created));
    el.reset();
  })));
}
