// Sign in, or register as a customer or a provider.
import { field, fill, form, h, select } from "../dom.js";
import { anonymous } from "../session.js";

/** Render the sign-in page into `main`; `done(tokenAnswer)` runs once the API has given a token. */
export function signIn(main, message, done) {
  const signInForm = form([
    field("Email", { name: "email", type: "email", autocomplete: "username", required: true }),
    field("Password", { name: "password", type: "password", autocomplete: "current-password", required: true }),
  ], "Sign in", async (values) => done(await anonymous.request("POST", "/v1/auth/token", values)),
  { id: "sign-in", "aria-labelledby": "sign-in-title" });

  const registerForm = form([
    field("Name", { name: "name", autocomplete: "name", required: true }),
    field("Email", { name: "email", type: "email", autocomplete: "email", required: true }),
    field("Password (8 characters or more)", { name: "password", type: "password", autocomplete: "new-password", required: true }),
    select("I want to", "role", [["customer", "book resources"], ["provider", "offer resources"]], "customer"),
  ], "Create account", async (values) => done(await anonymous.request("POST", "/v1/auth/register", values)),
  { id: "register", "aria-labelledby": "register-title" });

  document.title = "Sign in · Bookwire";
  fill(main,
    h("h1", {}, "Welcome to Bookwire"),
    message ? h("p", { class: "notice", role: "status" }, message) : null,
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", { id: "sign-in-title" }, "Sign in"), signInForm),
      h("section", { class: "card" }, h("h2", { id: "register-title" }, "New here?"), registerForm)));
}
