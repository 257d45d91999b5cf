// What several views share: resource names, the actions a person may take on a booking, and the
// time left to answer a request.
import { h, problemText, timeLeft, toast } from "../dom.js";

/** Resources by id, read once per page (the first 100, then one by one for any other). */
export async function resourceDirectory(ctx, query = "") {
  const known = new Map();
  const first = await ctx.api("GET", `/v1/resources?limit=100${query}`);
  for (const resource of first.items) known.set(resource.id, resource);
  return {
    list: first.items,
    known,
    async get(id) {
      if (!known.has(id)) {
        try { known.set(id, await ctx.api("GET", `/v1/resources/${id}`)); } catch { known.set(id, null); }
      }
      return known.get(id);
    },
  };
}

/** `[action, label]` pairs the person may take on `booking` now (SPEC's status machine). */
export function actionsFor(user, booking) {
  const owner = user.role === "admin" || booking.owner_id === user.id;
  const customer = booking.customer_id === user.id;
  const status = booking.status;
  const actions = [];
  if (owner && status === "pending") actions.push(["confirm", "Confirm"], ["reject", "Reject"]);
  if (owner && status === "confirmed") actions.push(["check-in", "Check in"]);
  if (owner && status === "checked_in") actions.push(["complete", "Complete"]);
  if ((owner || customer) && (status === "pending" || status === "confirmed")) actions.push(["cancel", "Cancel"]);
  return actions;
}

/** Buttons for the allowed actions; `done(booking)` gets the booking after the action. */
export function actionButtons(ctx, booking, done) {
  return actionsFor(ctx.user, booking).map(([action, label]) => h("button", {
    type: "button", class: action === "reject" || action === "cancel" ? "secondary" : "",
    dataset: { action }, "aria-label": `${label} booking`,
    onclick: async (event) => {
      event.currentTarget.disabled = true;
      try {
        done(await ctx.api("POST", `/v1/bookings/${booking.id}/${action}`, {}));
      } catch (error) {
        toast(`Could not ${label.toLowerCase()}`, problemText(error), "alert");
        event.target.disabled = false;
      }
    },
  }, label));
}

/** When a pending booking must be answered by (ms since the epoch), or null when it need not be. */
export function deadlineOf(booking, resource) {
  if (booking.status !== "pending" || !resource || !resource.response_deadline_seconds) return null;
  return Date.parse(booking.offered_at || booking.created_at) + resource.response_deadline_seconds * 1000;
}

/** A countdown element that a page's ticker updates (see `tickCountdowns`). */
export function countdown(deadline) {
  if (deadline === null) return h("span", { class: "muted" }, "no deadline");
  return h("span", { class: "countdown", dataset: { deadline: String(deadline) } }, `${timeLeft(deadline)} left`);
}

/** Refresh every countdown on the page once a second, for as long as the page is open. */
export function tickCountdowns(ctx) {
  ctx.page.every(1000, () => {
    for (const el of ctx.main.querySelectorAll(".countdown[data-deadline]")) {
      const deadline = Number(el.dataset.deadline);
      el.textContent = deadline > Date.now() ? `${timeLeft(deadline)} left` : "time is up";
      el.classList.toggle("late", deadline - Date.now() < 60_000);
    }
  });
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}
