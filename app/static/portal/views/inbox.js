// The inbox: conversations with their last message and unread count, kept current as messages arrive.
import { empty, fill, h, when } from "../dom.js";
import { debounce } from "./common.js";

export async function inboxView(ctx) {
  const list = h("div", { id: "conversations" });
  async function draw() {
    const page = await ctx.api("GET", "/v1/conversations?limit=50");
    fill(list, page.items.length ? page.items.map((c) => {
      const others = c.participants.filter((p) => p.user_id !== ctx.user.id);
      return h("a", { href: `/bookings/${c.booking_id}`, class: "card spread conversation", dataset: { bookingId: c.booking_id } },
      h("span", {}, h("strong", {}, others.map((p) => `${p.name}${p.online ? " (online)" : ""}`).join(", ") || "Conversation"),
        h("br"), h("span", { class: "muted" }, c.last_message.body.slice(0, 140))),
      h("span", {}, when(c.last_message.created_at), c.unread ? h("span", { class: "badge" }, String(c.unread)) : null));
    }) : empty("No conversations yet. Open a booking to write to the other side."));
  }
  await draw();
  fill(ctx.main, h("h1", {}, "Inbox"), list);
  const redraw = debounce(() => draw().catch(() => {}), 300);
  ctx.page.on("message.*", redraw);
  ctx.page.on("presence.changed", redraw);
}
