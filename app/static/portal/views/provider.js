// A provider's pages: incoming requests with the time left to answer, and their resources.
import { empty, field, fill, form, h, money, select, statusBadge, toast, when } from "../dom.js";
import { actionButtons, countdown, deadlineOf, resourceDirectory, tickCountdowns } from "./common.js";

// ---- requests ------------------------------------------------------------------------------------

export async function requestsView(ctx) {
  const [resources, pending] = await Promise.all([
    resourceDirectory(ctx, `&owner_id=${ctx.user.id}`),
    ctx.api("GET", "/v1/bookings?status=pending&limit=100"),
  ]);
  const list = h("div", { class: "grid", id: "requests" });
  const none = empty("No requests waiting. New ones appear here as they come in.");

  async function card(booking) {
    const resource = await resources.get(booking.resource_id);
    return h("article", { class: "card", dataset: { bookingId: booking.id, version: String(booking.version) },
      "aria-label": `Request for ${resource ? resource.name : "a resource"}` },
    h("div", { class: "spread" }, h("h2", {}, resource ? resource.name : "A resource"), statusBadge(booking.status)),
    h("p", {}, `${when(booking.starts_at)} – ${when(booking.ends_at)} · ${booking.seats} seat${booking.seats === 1 ? "" : "s"} · `,
      h("span", { class: "price" }, money(booking.price_cents, booking.currency))),
    booking.notes ? h("p", { class: "message" }, booking.notes) : null,
    h("p", {}, "Time left to answer: ", countdown(deadlineOf(booking, resource))),
    h("div", { class: "row" }, actionButtons(ctx, booking, (after) => place(after)),
      h("a", { href: `/bookings/${booking.id}` }, "Open")));
  }

  // Pending requests of this provider stay; anything else (answered, expired, moved on) leaves.
  async function place(booking) {
    const old = list.querySelector(`[data-booking-id="${booking.id}"]`);
    if (old && Number(old.dataset.version) > booking.version) return;
    if (booking.status === "pending" && booking.owner_id === ctx.user.id) {
      const fresh = await card(booking);
      fresh.classList.add("flash");
      if (old) old.replaceWith(fresh); else list.prepend(fresh);
    } else {
      old?.remove();
    }
    none.hidden = list.children.length > 0;
  }

  for (const booking of pending.items) list.append(await card(booking));
  none.hidden = pending.items.length > 0;
  fill(ctx.main, h("h1", {}, "Requests"), list, none);
  tickCountdowns(ctx);
  ctx.page.on("booking.*", (event) => place(event.data));
}

// ---- resources -----------------------------------------------------------------------------------

/** The form's values as the API's resource fields (price in cents, deadline in seconds). */
function resourceFields(values) {
  const price = Number(String(values.price).replace(",", "."));
  if (!Number.isFinite(price) || price < 0) throw new Error("Price: a number such as 12.50.");
  const minutes = String(values.deadline_minutes || "").trim();
  return {
    name: values.name, kind: values.kind, description: values.description,
    capacity: Number(values.capacity), price_cents: Math.round(price * 100), currency: values.currency.toUpperCase(),
    timezone: values.timezone, requires_confirmation: values.requires_confirmation === "on",
    response_deadline_seconds: minutes ? Math.round(Number(minutes) * 60) : null,
    active: values.active === "on", pool_id: values.pool_id || null,
  };
}

function resourceForm(pools, resource, label, action) {
  const r = resource || { name: "", kind: "room", description: "", capacity: 1, price_cents: 0, currency: "EUR",
    timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC", requires_confirmation: true,
    response_deadline_seconds: null, active: true, pool_id: null };
  return form([
    h("div", { class: "fields" },
      field("Name", { name: "name", value: r.name, required: true, maxlength: 200 }),
      field("Kind", { name: "kind", value: r.kind }),
      field("Capacity (seats)", { name: "capacity", type: "number", min: 1, value: String(r.capacity) }),
      field("Price", { name: "price", inputmode: "decimal", value: (r.price_cents / 100).toFixed(2) }),
      field("Currency", { name: "currency", value: r.currency, maxlength: 3 }),
      field("Time zone", { name: "timezone", value: r.timezone }),
      field("Minutes to answer a request (empty: no limit)", { name: "deadline_minutes", type: "number", min: 1,
        value: r.response_deadline_seconds ? String(r.response_deadline_seconds / 60) : "" }),
      select("Pool", "pool_id", [["", "No pool"], ...pools.map((p) => [p.id, p.name])], r.pool_id || "")),
    field("Description", { name: "description", value: r.description }, "textarea"),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "requires_confirmation", checked: r.requires_confirmation }),
      "I confirm each booking myself"),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "active", checked: r.active }), "Open for booking"),
  ], label, async (values) => action(resourceFields(values)));
}

export async function resourcesView(ctx) {
  const [mine, pools] = await Promise.all([
    ctx.api("GET", `/v1/resources?limit=100&owner_id=${ctx.user.id}`),
    ctx.api("GET", "/v1/pools?limit=100"),
  ]);
  const list = h("div", { id: "my-resources" });

  function entry(resource) {
    return h("details", { class: "card", dataset: { resourceId: resource.id } },
      h("summary", {}, h("strong", {}, resource.name), " · ", money(resource.price_cents, resource.currency),
        ` · ${resource.capacity} seat${resource.capacity === 1 ? "" : "s"}`, resource.active ? "" : " · closed"),
      resourceForm(pools.items, resource, "Save changes", async (fields) => {
        const saved = await ctx.api("PATCH", `/v1/resources/${resource.id}`, fields);
        toast("Saved", `${saved.name} is updated; open pages show it now.`);
        list.querySelector(`[data-resource-id="${resource.id}"]`).replaceWith(entry(saved));
      }),
      h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete ${resource.name}?`)) return;
        await ctx.api("DELETE", `/v1/resources/${resource.id}`);
        list.querySelector(`[data-resource-id="${resource.id}"]`)?.remove();
      } }, "Delete"));
  }

  fill(list, mine.items.length ? mine.items.map(entry) : empty("No resources yet: add your first one below."));
  const create = h("section", { class: "card" }, h("h2", {}, "Add a resource"),
    resourceForm(pools.items, null, "Add resource", async (fields) => {
      const created = await ctx.api("POST", "/v1/resources", fields);
      list.querySelector(".empty")?.remove();
      list.prepend(entry(created));
      toast("Added", created.name);
    }));
  fill(ctx.main, h("h1", {}, "Resources"), list, create);
}
