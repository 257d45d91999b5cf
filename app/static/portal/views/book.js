// A customer's "Book" page: active resources and pools with live prices and seats left for the
// chosen slot, and booking one.
//
// Prices and other resource changes arrive on the customer's own role channel. Seats left change
// with other people's bookings, which only `resource:<id>` channels carry: the page opens a second
// client following the listed resources (at most 50, the API's limit per connection) and refetches
// a resource's seats when its `resource.availability` arrives.
import { empty, fill, h, localInput, localToRfc3339, money, problemText, toast } from "../dom.js";
import { debounce } from "./common.js";

const MAX_TOPICS = 50;

export async function bookView(ctx) {
  const [resources, pools] = await Promise.all([
    ctx.api("GET", "/v1/resources?limit=100"),
    ctx.api("GET", "/v1/pools?limit=100"),
  ]);
  const shown = new Map(resources.items.filter((r) => r.active).map((r) => [r.id, r]));
  const slot = { starts: localInput(25), ends: localInput(26), seats: 1 };

  const slotForm = h("form", { class: "card fields", id: "slot", "aria-label": "When" },
    h("label", {}, "From", h("input", { type: "datetime-local", name: "starts", value: slot.starts, required: true })),
    h("label", {}, "To", h("input", { type: "datetime-local", name: "ends", value: slot.ends, required: true })),
    h("label", {}, "Seats", h("input", { type: "number", name: "seats", value: "1", min: "1", required: true })),
    h("label", {}, "Notes for the provider", h("input", { name: "notes", maxlength: "2000" })));
  slotForm.addEventListener("submit", (e) => e.preventDefault());
  slotForm.addEventListener("change", () => {
    const values = Object.fromEntries(new FormData(slotForm));
    Object.assign(slot, { starts: values.starts, ends: values.ends, seats: Number(values.seats) || 1, notes: values.notes });
    refreshAllSeats();
  });

  const resourceGrid = h("div", { class: "grid wide", id: "resources" });
  const poolGrid = h("div", { class: "grid wide", id: "pools" });

  function interval() {
    return { from: localToRfc3339(slot.starts), to: localToRfc3339(slot.ends) };
  }

  /** `[seats left, capacity]` of a resource or a pool over the chosen slot; null for an invalid slot. */
  async function seatsLeft(kind, id) {
    try {
      const { from, to } = interval();
      const answer = await ctx.api("GET", `/v1/${kind}/${id}/availability?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
      const taken = Math.max(0, ...answer.busy.map((b) => b.seats_taken));
      return [Math.max(0, answer.capacity - taken), answer.capacity];
    } catch {
      return null;  // booking it says why
    }
  }

  async function book(target) {
    const { from, to } = interval();
    try {
      const booking = await ctx.api("POST", "/v1/bookings", {
        ...target, starts_at: from, ends_at: to, seats: slot.seats, notes: slot.notes || "" });
      toast(booking.status === "confirmed" ? "Booked" : "Requested", "Your booking is on its way.");
      ctx.go(`/bookings/${booking.id}`);
    } catch (error) {
      toast("Could not book", problemText(error), "alert");
    }
  }

  function resourceCard(resource) {
    return h("article", { class: "card", dataset: { resourceId: resource.id }, "aria-label": resource.name },
      h("div", { class: "spread" }, h("h2", {}, resource.name), h("span", { class: "price", dataset: { price: "" } },
        money(resource.price_cents, resource.currency))),
      h("p", { class: "muted" }, [resource.kind, `${resource.capacity} seat${resource.capacity === 1 ? "" : "s"}`,
        resource.requires_confirmation ? "the provider confirms" : "confirmed at once"].filter(Boolean).join(" · ")),
      resource.description ? h("p", {}, resource.description) : null,
      h("div", { class: "spread" }, h("span", { dataset: { seats: "" } }, "…"),
        h("button", { type: "button", onclick: () => book({ resource_id: resource.id }) }, `Book ${resource.name}`)));
  }

  async function drawSeats(card, kind, id) {
    const seats = await seatsLeft(kind, id);
    card.querySelector("[data-seats]").textContent = seats === null ? "choose a valid slot" : `${seats[0]} of ${seats[1]} seats left`;
  }

  function refreshAllSeats() {
    for (const resource of shown.values()) {
      const card = resourceGrid.querySelector(`[data-resource-id="${resource.id}"]`);
      if (card) drawSeats(card, "resources", resource.id);
    }
    drawPoolSeats();
  }

  function drawPoolSeats() {
    for (const pool of pools.items) {
      const card = poolGrid.querySelector(`[data-pool-id="${pool.id}"]`);
      if (card) drawSeats(card, "pools", pool.id);
    }
  }

  function drawResources() {
    fill(resourceGrid, shown.size ? [...shown.values()].map(resourceCard) : empty("Nothing to book yet."));
  }

  drawResources();
  fill(poolGrid, pools.items.length ? pools.items.map((pool) => h("article", { class: "card", dataset: { poolId: pool.id } },
    h("h2", {}, pool.name), pool.description ? h("p", {}, pool.description) : null,
    h("p", { class: "muted" }, "Any provider of this pool: if one does not answer in time, the next one is asked."),
    h("div", { class: "spread" }, h("span", { dataset: { seats: "" } }, "…"),
      h("button", { type: "button", onclick: () => book({ pool_id: pool.id }) }, `Book from ${pool.name}`))))
    : empty("No pools."));
  fill(ctx.main, h("h1", {}, "Book"), slotForm, h("h2", {}, "Resources"), resourceGrid, h("h2", {}, "Pools"), poolGrid);
  refreshAllSeats();

  // Pool seats: the pool's availability sums its resources; pools have no channel of their own.
  const refreshPools = debounce(drawPoolSeats, 300);
  ctx.page.on("resource.*", (event) => {
    const resource = event.data;
    if (event.type === "resource.deleted" || !resource.active) shown.delete(resource.id);
    else shown.set(resource.id, resource);
    const card = resourceGrid.querySelector(`[data-resource-id="${resource.id}"]`);
    if (card && shown.has(resource.id)) {
      const fresh = resourceCard(resource);
      fresh.classList.add("flash");
      card.replaceWith(fresh);
      drawSeats(fresh, "resources", resource.id);
    } else if (!card || !shown.has(resource.id)) {
      drawResources();
      refreshAllSeats();
    }
  });
  if (!shown.size) return;
  const seats = ctx.page.client([...shown.keys()].slice(0, MAX_TOPICS).map((id) => `resource:${id}`));
  seats.on("resource.availability", (event) => {
    const resource = shown.get(event.data.resource_id);
    const card = resource && resourceGrid.querySelector(`[data-resource-id="${resource.id}"]`);
    if (card) drawSeats(card, "resources", resource.id);
    refreshPools();
  });
  seats.start();
}
