// Type declarations of /client/bookwire.js (Bookwire's browser client).

/** An event as every transport delivers it. `id` is null for ephemeral events (typing, presence). */
export interface Envelope<T = unknown> {
  id: string | null;
  type: string;
  channel: string | null;
  occurred_at: string;
  data: T;
}

/** An RFC 9457 problem document, as the API answers errors. */
export interface Problem {
  type?: string;
  title: string;
  status: number;
  detail?: string;
  errors?: { field: string; message: string }[];
  [extension: string]: unknown;
}

export type ConnectionState = "connecting" | "live" | "polling" | "offline";
export type Transport = "auto" | "sse" | "poll";

export interface BookwireOptions {
  /** Where the API is; "" (default) for the page's own origin. */
  baseUrl?: string;
  /** An access token; called whenever one is needed, so it may refresh it. An empty string or null
   * sends no Authorization header (for `request()` to sign-in and registration). */
  getAccessToken: () => Promise<string | null>;
  /** Extra channels to follow, e.g. ["resource:<id>"]. */
  topics?: string[];
  /** "auto" (default): SSE, falling back to long-poll; or only "sse", or only "poll". */
  transport?: Transport;
}

/** Thrown by `request()` for an answer that is not 2xx. */
export class BookwireError extends Error {
  readonly status: number;
  readonly problem: Problem;
}

export class Bookwire {
  constructor(options: BookwireOptions);
  /** The id of the last event handed to listeners (where a reconnect resumes), or null. */
  readonly lastEventId: string | null;
  readonly state: ConnectionState;
  readonly topics: string[];
  on(type: "state", listener: (state: ConnectionState) => void): () => void;
  /** After `stream.reset`: refetch what the page shows over REST. */
  on(type: "reset", listener: (envelope: Envelope) => void): () => void;
  /** A type ("booking.confirmed"), a prefix ("booking.*") or every type ("*"). */
  on(type: string, listener: (envelope: Envelope) => void): () => void;
  start(): void;
  stop(): void;
  /** Call the JSON API with the access token: the parsed answer (null for 204), or a BookwireError. */
  request<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
}
