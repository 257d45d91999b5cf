// The signed-in session: the access token and the user it belongs to.
//
// The token lives in this tab's sessionStorage (and memory), never in a URL and never in
// localStorage: it goes when the tab is closed, survives a reload, and is not shared with other tabs
// (two people can sign in side by side in one browser). It is dropped when it expires or the API
// answers 401; the person then signs in again (the API has no refresh tokens).
import { Bookwire } from "/client/bookwire.js";

const KEY = "bookwire.session";
export const EARLY_MS = 30_000; // treat a token that is about to expire as gone

let session = load();

function load() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(KEY) || "null");
    return saved && saved.expiresAt > Date.now() + EARLY_MS ? saved : null;
  } catch {
    return null;
  }
}

export function current() {
  return session && session.expiresAt > Date.now() + EARLY_MS ? session : null;
}

/** Keep a token answer (`{access_token, expires_in}`) and the user it belongs to. */
export function keep(answer, user) {
  session = { token: answer.access_token, expiresAt: Date.now() + answer.expires_in * 1000, user };
  sessionStorage.setItem(KEY, JSON.stringify(session));
  return session;
}

export function forget() {
  session = null;
  sessionStorage.removeItem(KEY);
}

/** The token for the client; a rejection (no session) makes the client back off until sign-in. */
export async function accessToken() {
  const now = current();
  if (!now) throw new Error("signed out");
  return now.token;
}

/** An API client without a session, for sign-in and registration. */
export const anonymous = new Bookwire({ getAccessToken: async () => null });
