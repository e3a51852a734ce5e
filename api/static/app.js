// The operators' approval page. Plain JavaScript, no build step and nothing from another origin:
// it talks to this origin's API with the operator's bearer token (kept in sessionStorage, so it
// dies with the tab) and follows the /ws/hitl stream to stay live without reloads.
//
// All text that comes from the API (the bot's reasoning, comments, error messages) is written with
// textContent, never as HTML: a proposal must not be able to run script in an operator's session.

const TOKEN_KEY = "hitl.operatorToken";
const GUARDIAN_POLL_MS = 3000;
const PREVIEW_POLL_MS = 3000; // the market moves: refresh each pending approval's slippage preview
const FALLBACK_POLL_MS = 10000; // refresh the list this often while the stream is down
const URGENT_SECONDS = 60;
const MAX_OUTCOMES = 20;
const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 10000;
const AWAITING = "AWAITING_APPROVAL";

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  generation: 0, // bumped on sign-out so that late answers of an old session are dropped
  rows: new Map(), // trade_id -> approval awaiting a decision
  previews: new Map(), // trade_id -> its slippage preview, or { unavailable: message }
  previewInFlight: false,
  elements: new Map(), // trade_id -> its <li>
  finished: new Set(), // trade_ids known decided or expired: never shown as pending again
  createdDuringFetch: null, // Map while a list refresh is in flight (see refreshPending)
  clockOffsetMs: 0, // server clock minus this browser's clock, so countdowns follow the server
  lastEventId: null,
  socket: null,
  streamLive: false,
  reconnectDelay: RECONNECT_FIRST_MS,
  guardian: { locked: false },
  focus: null, // the deep-linked approval: { tradeId, approval, note }
  dialog: null, // the open decision: { tradeId, decision, opener, submitting }
  inflight: new Set(), // trade_ids with a decision being sent
  escalated: new Set(), // trade_ids escalated (hitl.escalated): badged until decided
  temporalUi: null, // { url, namespace } from /page-config, when HITL_TEMPORAL_UI_URL is set
  timers: [],
};

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body) {
    super(body?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error_code ?? null;
    this.body = body ?? {};
  }
}

async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (auth && state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, { error_code: "NETWORK", message: "The gateway cannot be reached." });
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

// A 404 that is SEC-004 means the endpoint itself is missing (an older gateway), not the record.
const endpointMissing = (err) => err.status === 404 && err.code === "SEC-004";

// ---------------------------------------------------------------- formatting

function trimDecimal(text) {
  // Decimals arrive as strings; trimming them as strings never rounds a price.
  const value = String(text);
  return value.includes(".") ? value.replace(/0+$/, "").replace(/\.$/, "") : value;
}

function percentOfOne(text) {
  return `${trimDecimal((Math.round(Number(text) * 1000) / 10).toFixed(1))} %`;
}

function clock(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function serverNow() {
  return Date.now() + state.clockOffsetMs;
}

function secondsLeft(approval) {
  return (Date.parse(approval.expires_at) - serverNow()) / 1000;
}

function countdownText(seconds) {
  const whole = Math.max(0, Math.ceil(seconds));
  const hours = Math.floor(whole / 3600);
  const minutes = Math.floor((whole % 3600) / 60);
  const secs = String(whole % 60).padStart(2, "0");
  return hours > 0 ? `${hours}:${String(minutes).padStart(2, "0")}:${secs}` : `${minutes}:${secs}`;
}

function tradeName(approval) {
  return `${approval.instrument} ${approval.side}`;
}

function approversText(approval) {
  // Four eyes: the operators who approved an approval that needs two, in order.
  return (approval.approvers ?? []).join(" and ");
}

function approvalsProgress(approval) {
  // "1 of 2 approvals (alice)": an approval above the four-eyes risk level, so far.
  const approvers = approval.approvers ?? [];
  return `${approvers.length} of 2 approvals (${approvers.join(", ")})`;
}

function describeOutcome(approval) {
  const who = approval.decided_by ?? "the system";
  switch (approval.decision_reason) {
    case "OPERATOR_APPROVED":
      return `approved by ${approval.approvers?.length ? approversText(approval) : who}`;
    case "OPERATOR_REJECTED":
      return `rejected by ${who}${approval.comment ? ` (“${approval.comment}”)` : ""}`;
    case "HITL_TIMEOUT":
      return "expired without a decision";
    case "SLIPPAGE_EXCEEDED":
      return "rejected: the price moved beyond the slippage limit";
    case "GUARDIAN_LOCK":
      return "rejected: the Guardian locked trading";
    case "HITL_DISABLED":
      return "rejected: approvals are switched off";
    case "INTEGRITY_FAILURE":
      return "rejected: the record failed its integrity check";
    default:
      return `now ${approval.status}`;
  }
}

function verdict(approval) {
  // The outcome without its author, for sentences that already name who decided.
  switch (approval.decision_reason) {
    case "OPERATOR_APPROVED":
      return "approved";
    case "OPERATOR_REJECTED":
      return `rejected${approval.comment ? ` (“${approval.comment}”)` : ""}`;
    default:
      return describeOutcome(approval);
  }
}

// ---------------------------------------------------------------- messages

function showOutcome(text, kind) {
  const region = $("outcome");
  region.dataset.kind = kind;
  region.textContent = text;
}

function announce(text) {
  // Clear first so that the same sentence twice is still read out.
  const region = $("announcer");
  region.textContent = "";
  window.setTimeout(() => {
    region.textContent = text;
  }, 50);
}

function logOutcome(approval, text) {
  const list = $("outcome-list");
  const item = document.createElement("li");
  item.dataset.tradeId = approval.trade_id;
  item.dataset.status = approval.status;
  const time = document.createElement("time");
  time.dateTime = approval.decided_at ?? new Date().toISOString();
  time.textContent = clock(approval.decided_at ?? new Date().toISOString());
  item.append(time, ` ${tradeName(approval)}: ${text}`);
  list.prepend(item);
  while (list.children.length > MAX_OUTCOMES) list.lastElementChild.remove();
  $("outcomes-empty").hidden = true;
}

function errorText(err, approval) {
  const name = approval ? tradeName(approval) : "this approval";
  const ref = err.body?.correlation_id ? ` (reference ${err.body.correlation_id})` : "";
  const decision = err.body?.decision;
  switch (err.code) {
    case "SEC-012":
      return `Not recorded: ${name} was already decided by ${decision?.decided_by ?? "someone else"}` +
        `${decision ? `: ${verdict(decision)}` : ""}.${ref}`;
    case "SEC-050":
      return `Not executed: the price of ${name} moved beyond the slippage limit since the request, ` +
        `so the request is now rejected.${ref}`;
    case "SEC-013":
      return `Too late: ${name} expired before your decision; nothing was traded.${ref}`;
    case "SEC-014":
      return `Not recorded: you already approved ${name}; its risk needs a second approval from ` +
        `a different operator.${ref}`;
    case "SEC-020":
      return `Refused: the Guardian is locked, so no decision can be taken.${ref}`;
    case "SEC-090":
      return `Refused: your token may not decide approvals (${err.message}).${ref}`;
    case "SEC-080":
      return `Refused: the stored record of ${name} failed its integrity check. Do not act on it; ` +
        `tell security.${ref}`;
    case "SEC-010":
      return `There is no approval for this trade.${ref}`;
    case "SEC-070":
    case "SEC-060":
    case "NETWORK":
      return `No answer in time: your decision on ${name} may not have been recorded. The list ` +
        `updates by itself if it was; otherwise try again.${ref}`;
    default:
      return `${err.code ?? `HTTP ${err.status}`}: ${err.message}${ref}`;
  }
}

// ---------------------------------------------------------------- rendering

function buildApproval(approval, { idPrefix }) {
  const article = $("approval-template").content.firstElementChild.cloneNode(true);
  const titleId = `${idPrefix}-${approval.trade_id}-title`;
  article.querySelector(".approval-title").id = titleId;
  article.setAttribute("aria-labelledby", titleId);
  fillApproval(article, approval);
  for (const button of article.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", () => openDialog(approval.trade_id, button.dataset.action, button));
  }
  return article;
}

function fillApproval(article, approval) {
  article.dataset.tradeId = approval.trade_id;
  article.querySelector(".instrument").textContent = approval.instrument;
  const side = article.querySelector(".side");
  side.textContent = approval.side;
  side.dataset.side = approval.side;
  article.querySelector(".risk").textContent = `${trimDecimal(approval.risk_pct)} %`;
  article.querySelector(".confidence").textContent = percentOfOne(approval.confidence);
  article.querySelector(".price").textContent = trimDecimal(approval.request_price);
  article.querySelector(".expires").textContent = clock(approval.expires_at);
  article.querySelector(".reasoning").textContent = approval.reasoning_summary;
  article.querySelector(".trade-id").textContent = approval.trade_id;
  const temporal = article.querySelector(".temporal-link");
  temporal.hidden = !state.temporalUi;
  if (state.temporalUi) {
    const { url, namespace } = state.temporalUi;
    temporal.href = `${url}/namespaces/${encodeURIComponent(namespace)}/workflows/approval-${encodeURIComponent(approval.trade_id)}`;
  }
  article.querySelector(".escalated-badge").hidden = !state.escalated.has(approval.trade_id);
  const remaining = article.querySelector(".remaining");
  remaining.dataset.expires = approval.expires_at;
  for (const target of article.querySelectorAll(".action-target")) {
    target.textContent = ` ${tradeName(approval)}`;
  }
  article.querySelector(".integrity-warning").hidden = approval.integrity_ok !== false;
  fillPreview(article, approval);
  const statusLine = article.querySelector(".status-line");
  const awaiting = approval.status === undefined || approval.status === AWAITING;
  const approvalsLine = article.querySelector(".approvals-line");
  const approvers = approval.approvers ?? [];
  approvalsLine.hidden = approvers.length === 0;
  approvalsLine.textContent = approvers.length === 0
    ? ""
    : awaiting
      ? `${approvalsProgress(approval)}: a second, different operator must approve.`
      : `Approvals: ${approvalsProgress(approval)}.`;
  statusLine.hidden = awaiting;
  statusLine.textContent = awaiting ? "" : `Decided: ${describeOutcome(approval)}.`;
  article.querySelector(".countdown").hidden = !awaiting;
  article.querySelector(".actions").hidden = !awaiting;
  article.classList.toggle("decided", !awaiting);
  tickOne(article);
}

function signedPercent(text) {
  const value = Number(text);
  const shown = Math.abs(value).toFixed(2);
  return `${value < 0 && shown !== "0.00" ? "-" : "+"}${shown} %`;
}

function fillPreview(article, approval) {
  // What approving now would meet: the current execution price for the side and its deviation
  // from the requested price, computed by the gateway with the decision's own arithmetic.
  const market = article.querySelector(".market");
  const warning = article.querySelector(".slippage-warning");
  const awaiting = approval.status === undefined || approval.status === AWAITING;
  const preview = awaiting ? state.previews.get(approval.trade_id) : undefined;
  article.querySelector(".market-fact").hidden = !awaiting;
  let exceeds = false;
  if (!preview) {
    market.dataset.state = "loading";
    market.textContent = "…";
    market.removeAttribute("title");
  } else if (preview.unavailable) {
    market.dataset.state = "unavailable";
    market.textContent = "unavailable";
    market.title = preview.unavailable;
  } else {
    exceeds = Boolean(preview.exceeds);
    market.dataset.state = "ok";
    market.textContent = `${trimDecimal(preview.current_price)} (${signedPercent(preview.deviation_pct)})`;
    market.title = `As of ${clock(preview.as_of)}`;
    warning.textContent =
      `The price moved ${signedPercent(preview.deviation_pct)} since the request, beyond the ` +
      `${trimDecimal(preview.max_slippage_pct)} % slippage limit: approving now would be rejected.`;
  }
  warning.hidden = !exceeds;
  article.classList.toggle("exceeds", exceeds);
}

async function refreshPreviews() {
  if (!state.token || state.previewInFlight) return;
  const focused = state.focus?.approval;
  const focusPending = focused && (focused.status === undefined || focused.status === AWAITING);
  if (state.rows.size === 0 && !focusPending) return;
  const generation = state.generation;
  state.previewInFlight = true;
  try {
    // One request for every pending approval (one quote per instrument on the server).
    const page = await api("/api/hitl/pending/previews");
    if (generation !== state.generation) return;
    const previews = new Map();
    for (const preview of page.items) previews.set(preview.trade_id, preview);
    for (const missing of page.unavailable) {
      previews.set(missing.trade_id, { unavailable: missing.message });
    }
    state.previews = previews;
  } catch (err) {
    if (generation !== state.generation) return;
    if (err.status === 401) return signOut("Your token was refused; sign in again.");
    // An older gateway has no previews; a passing failure keeps the last ones until the next.
    if (!endpointMissing(err)) return;
    state.previews = new Map();
  } finally {
    if (generation === state.generation) state.previewInFlight = false;
  }
  for (const article of document.querySelectorAll("article.approval[data-trade-id]")) {
    const approval = approvalFor(article.dataset.tradeId);
    if (approval) fillPreview(article, approval);
  }
}

function decisionBlocked(approval) {
  if (!state.token) return "Sign in to decide.";
  if (state.guardian.locked) return "The Guardian is locked.";
  if (approval.integrity_ok === false) return "The record failed its integrity check.";
  if (approval.status !== undefined && approval.status !== AWAITING) return "Already decided.";
  if (secondsLeft(approval) <= 0) return "Expired.";
  if (state.inflight.has(approval.trade_id)) return "A decision is being sent.";
  return null;
}

function updateButtons(article, approval) {
  const blocked = decisionBlocked(approval);
  for (const button of article.querySelectorAll("button[data-action]")) {
    button.disabled = blocked !== null;
    if (blocked) button.title = blocked;
    else button.removeAttribute("title");
  }
}

function tickOne(article) {
  const remaining = article.querySelector(".remaining");
  const approval = approvalFor(article.dataset.tradeId);
  if (!remaining || !approval) return;
  const seconds = secondsLeft(approval);
  const text = seconds > 0 ? countdownText(seconds) : "expired";
  if (remaining.textContent !== text) remaining.textContent = text;
  remaining.dateTime = `PT${Math.max(0, Math.ceil(seconds))}S`;
  article.classList.toggle("urgent", seconds > 0 && seconds <= URGENT_SECONDS);
  article.classList.toggle("expired", seconds <= 0);
  article.querySelector(".countdown-label").textContent = seconds > 0 ? "Expires in" : "Deadline passed:";
  updateButtons(article, approval);
}

function tick() {
  for (const article of document.querySelectorAll("article.approval[data-trade-id]")) tickOne(article);
}

function approvalFor(tradeId) {
  if (state.rows.has(tradeId)) return state.rows.get(tradeId);
  if (state.focus?.approval?.trade_id === tradeId) return state.focus.approval;
  return null;
}

function sortedIds() {
  return [...state.rows.values()]
    .sort((a, b) => Date.parse(a.expires_at) - Date.parse(b.expires_at) || a.trade_id.localeCompare(b.trade_id))
    .map((a) => a.trade_id);
}

function renderList() {
  const list = $("pending-list");
  const order = sortedIds();
  let newRows = false;
  for (const [tradeId, item] of state.elements) {
    if (!state.rows.has(tradeId)) {
      moveFocusOffRemovedRow(item, order);
      item.remove();
      state.elements.delete(tradeId);
    }
  }
  let previous = null;
  for (const tradeId of order) {
    const approval = state.rows.get(tradeId);
    let item = state.elements.get(tradeId);
    if (!item) {
      item = document.createElement("li");
      item.dataset.tradeId = tradeId;
      item.append(buildApproval(approval, { idPrefix: "pending" }));
      state.elements.set(tradeId, item);
      newRows = true;
    } else {
      fillApproval(item.firstElementChild, approval);
    }
    // Insert only when out of place: moving a node that holds focus would drop the focus.
    const expected = previous ? previous.nextElementSibling : list.firstElementChild;
    if (expected !== item) {
      if (previous) previous.after(item);
      else list.prepend(item);
    }
    previous = item;
  }
  $("pending-count").textContent = `(${order.length})`;
  $("pending-empty").hidden = order.length > 0;
  // A new approval gets its preview now rather than at the next refresh.
  if (newRows) refreshPreviews();
}

function moveFocusOffRemovedRow(item, order) {
  if (!item.contains(document.activeElement) || state.dialog) return;
  focusAfterRemoval(order);
}

function focusAfterRemoval(order) {
  // Keep a keyboard user in the list: the next approval's first button, else the heading.
  const next = order.map((id) => state.elements.get(id)).find((el) => el && el.isConnected);
  const button = next?.querySelector("button[data-action]:not([disabled])");
  (button ?? $("pending-title")).focus();
}

function renderFocus() {
  const section = $("focus");
  const focus = state.focus;
  section.hidden = !focus;
  if (!focus) return;
  $("focus-note").textContent = focus.note ?? "";
  $("focus-note").hidden = !focus.note;
  const body = $("focus-body");
  if (!focus.approval) {
    body.replaceChildren();
    return;
  }
  const existing = body.firstElementChild;
  if (existing && existing.dataset.tradeId === focus.approval.trade_id) fillApproval(existing, focus.approval);
  else {
    body.replaceChildren(buildApproval(focus.approval, { idPrefix: "focus" }));
    refreshPreviews();
  }
}

function renderGuardian() {
  const banner = $("guardian-banner");
  const g = state.guardian;
  banner.hidden = !g.locked;
  const parts = [];
  if (g.reason) parts.push(`Reason: ${g.reason}.`);
  const by = g.locked_by ?? g.changed_by; // the status model names it changed_by
  if (by) parts.push(`Locked by ${by}${g.since ? ` at ${clock(g.since)}` : ""}.`);
  else if (g.since) parts.push(`Locked at ${clock(g.since)}.`);
  $("guardian-detail").textContent = parts.join(" ");
  document.body.classList.toggle("locked", Boolean(g.locked));
  tick();
  syncDialog();
}

function setConnection(kind) {
  const labels = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" };
  const el = $("connection");
  el.dataset.state = kind;
  el.textContent = labels[kind];
}

function renderSession() {
  const signedIn = Boolean(state.token);
  $("sign-in").hidden = signedIn;
  $("workspace").hidden = !signedIn;
  $("session").hidden = !signedIn;
  tick();
}

// ---------------------------------------------------------------- list state

function upsert(approval) {
  if (state.finished.has(approval.trade_id)) return;
  const previous = state.rows.get(approval.trade_id);
  state.rows.set(approval.trade_id, { ...previous, ...approval });
}

function finish(approval, { own = false } = {}) {
  const tradeId = approval.trade_id;
  const known = state.rows.get(tradeId);
  const alreadyFinished = state.finished.has(tradeId);
  state.finished.add(tradeId);
  state.rows.delete(tradeId);
  if (state.focus?.approval?.trade_id === tradeId) {
    state.focus.approval = { ...state.focus.approval, ...approval };
    renderFocus();
  }
  if (!own && !alreadyFinished) {
    const text = describeOutcome(approval);
    logOutcome(approval, text);
    if (known) announce(`${tradeName(approval)} ${text}; removed from the list.`);
    if (state.dialog?.tradeId === tradeId && !state.dialog.submitting) {
      dialogStatus(
        approval.decided_by
          ? `This approval was already decided by ${approval.decided_by}: ${verdict(approval)}.`
          : `This approval is no longer awaiting a decision: ${text}.`,
      );
      $("decide-confirm").disabled = true;
      $("decide-cancel").textContent = "Close";
      $("decide-cancel").focus();
    }
  }
  renderList();
}

async function refreshPending() {
  // Events that arrive while the list is being fetched are kept aside and replayed over the
  // answer, which may predate them; decisions are final, so `finished` settles the rest.
  const generation = state.generation;
  state.createdDuringFetch = new Map();
  try {
    const sentAt = Date.now();
    const pending = await pendingApprovals();
    if (generation !== state.generation) return;
    const receivedAt = Date.now();
    if (pending.length > 0) {
      const first = pending[0];
      const serverAtAnswer = Date.parse(first.expires_at) - first.seconds_remaining * 1000;
      state.clockOffsetMs = serverAtAnswer - (sentAt + receivedAt) / 2;
    }
    const rows = new Map();
    for (const approval of pending) {
      if (!state.finished.has(approval.trade_id)) rows.set(approval.trade_id, approval);
      // Escalated before this page (re)loaded: badged as if the event had been seen.
      if (approval.escalated) state.escalated.add(approval.trade_id);
    }
    for (const [tradeId, approval] of state.createdDuringFetch) {
      if (!state.finished.has(tradeId)) rows.set(tradeId, { ...rows.get(tradeId), ...approval });
    }
    state.rows = rows;
    renderList();
  } catch (err) {
    if (generation !== state.generation) return;
    if (err.status === 401) signOut("Your token was refused; sign in again.");
    else showOutcome(`The pending list could not be loaded: ${errorText(err, null)}`, "error");
  } finally {
    if (generation === state.generation) state.createdDuringFetch = null;
  }
}

async function pendingApprovals() {
  // The list comes in pages (at most 500 each): follow next_cursor to the end.
  const items = [];
  let cursor = null;
  do {
    const params = new URLSearchParams({ limit: "500" });
    if (cursor) params.set("cursor", cursor);
    const page = await api(`/api/hitl/pending?${params}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

function applyEvent(event) {
  state.lastEventId = event.id;
  const approval = { ...event.approval, trade_id: event.trade_id };
  if (approval.status === AWAITING) {
    if (event.type === "hitl.escalated" && !state.escalated.has(approval.trade_id)) {
      state.escalated.add(approval.trade_id);
      announce(`Escalated: ${tradeName(approval)} is still undecided.`);
    }
    if (state.createdDuringFetch) state.createdDuringFetch.set(approval.trade_id, approval);
    const isNew = !state.rows.has(approval.trade_id) && !state.finished.has(approval.trade_id);
    upsert(approval);
    renderList();
    if (state.focus?.approval?.trade_id === approval.trade_id) {
      state.focus.approval = { ...state.focus.approval, ...approval };
      renderFocus();
    }
    if (isNew && event.type === "hitl.created") {
      announce(`New approval: ${tradeName(approval)}, expires in ${countdownText(secondsLeft(approval))}.`);
    }
    if (event.type === "hitl.approved_once" && !state.inflight.has(approval.trade_id)) {
      announce(`${tradeName(approval)}: ${approvalsProgress(approval)}; it needs a second operator.`);
    }
    return;
  }
  if (event.type === "hitl.lifecycle") {
    // Fills and settlements concern trades already decided; they only refresh the linked view.
    state.finished.add(approval.trade_id);
    if (state.focus?.approval?.trade_id === approval.trade_id) {
      state.focus.approval = { ...state.focus.approval, ...approval };
      renderFocus();
    }
    if (state.rows.delete(approval.trade_id)) renderList();
    return;
  }
  finish(approval, { own: state.inflight.has(approval.trade_id) });
}

// ---------------------------------------------------------------- the stream

function connect() {
  const generation = state.generation;
  const params = new URLSearchParams();
  // Resuming after the last event seen means nothing is missed while disconnected.
  if (state.lastEventId !== null) params.set("after", String(state.lastEventId));
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = params.toString();
  const socket = new WebSocket(`${scheme}//${location.host}/ws/hitl${query ? `?${query}` : ""}`);
  state.socket = socket;
  // The token travels in the first message, never in the address (which servers and proxies
  // write to their logs).
  const token = state.token;
  socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "auth", token })));
  setConnection(state.lastEventId === null ? "connecting" : "reconnecting");
  socket.addEventListener("message", (message) => {
    if (generation !== state.generation) return;
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    if (data.error_code) {
      if (data.error_code === "SEC-001") signOut("Your token was refused; sign in again.");
      return;
    }
    if (data.type === "stream.ready") {
      state.lastEventId = data.cursor;
      state.reconnectDelay = RECONNECT_FIRST_MS;
      state.streamLive = true;
      setConnection("live");
      refreshPending();
      return;
    }
    if (typeof data.id === "number" && data.trade_id && data.approval) applyEvent(data);
  });
  socket.addEventListener("close", () => {
    if (generation !== state.generation || state.socket !== socket) return;
    state.socket = null;
    state.streamLive = false;
    if (!state.token) return;
    setConnection("reconnecting");
    const delay = state.reconnectDelay;
    state.reconnectDelay = Math.min(delay * 2, RECONNECT_MAX_MS);
    window.setTimeout(() => {
      if (generation === state.generation && state.token) connect();
    }, delay);
  });
}

// ---------------------------------------------------------------- Guardian

async function refreshGuardian() {
  if (!state.token) return;
  const generation = state.generation;
  try {
    const status = await api("/api/guardian/status");
    if (generation !== state.generation) return;
    state.guardian = { ...status };
  } catch (err) {
    if (generation !== state.generation) return;
    // No Guardian endpoint (an older gateway): the server still refuses decisions with 423.
    if (endpointMissing(err)) state.guardian = { locked: false };
    else if (err.status === 401) return signOut("Your token was refused; sign in again.");
    else return; // keep the last known state through a passing failure
  }
  renderGuardian();
}

// ---------------------------------------------------------------- deciding

function dialogStatus(text) {
  $("decide-status").textContent = text;
}

function openDialog(tradeId, decision, opener) {
  const approval = approvalFor(tradeId);
  if (!approval || decisionBlocked(approval)) return;
  const approve = decision === "approve";
  state.dialog = { tradeId, decision, opener, submitting: false };
  $("decide-title").textContent = approve ? `Approve ${tradeName(approval)}?` : `Reject ${tradeName(approval)}?`;
  $("decide-summary").textContent =
    `${approval.instrument}, ${approval.side}, risk ${trimDecimal(approval.risk_pct)} %, ` +
    `price ${trimDecimal(approval.request_price)}, confidence ${percentOfOne(approval.confidence)}. ` +
    (approve
      ? `The price is checked against the market when you confirm.${previewSentence(tradeId)}`
      : "The trade will not be made.");
  $("decide-label").textContent = approve ? "Comment (optional)" : "Reason (required)";
  const text = $("decide-text");
  text.value = "";
  text.required = !approve;
  text.removeAttribute("aria-invalid");
  $("decide-error").textContent = "";
  dialogStatus("");
  const confirm = $("decide-confirm");
  confirm.textContent = approve ? "Confirm approval" : "Confirm rejection";
  confirm.classList.toggle("danger", !approve);
  $("decide-cancel").textContent = "Cancel";
  syncDialog();
  $("decide-dialog").showModal();
  text.focus();
}

function previewSentence(tradeId) {
  const preview = state.previews.get(tradeId);
  if (!preview || preview.unavailable) return "";
  const now = `${trimDecimal(preview.current_price)} (${signedPercent(preview.deviation_pct)})`;
  return preview.exceeds
    ? ` It is now ${now}, beyond the ${trimDecimal(preview.max_slippage_pct)} % limit: ` +
        "approving would be rejected unless the market comes back."
    : ` It is now ${now}.`;
}

function syncDialog() {
  const dialog = state.dialog;
  if (!dialog) return;
  const approval = approvalFor(dialog.tradeId);
  const confirm = $("decide-confirm");
  if (dialog.submitting) {
    confirm.disabled = true;
    return;
  }
  if (state.guardian.locked) {
    confirm.disabled = true;
    dialogStatus("The Guardian is locked: decisions are disabled.");
  } else if (approval && !decisionBlocked(approval)) {
    confirm.disabled = false;
    if ($("decide-status").textContent.startsWith("The Guardian")) dialogStatus("");
  }
}

function closeDialog() {
  const dialog = state.dialog;
  state.dialog = null;
  const element = $("decide-dialog");
  if (element.open) element.close();
  if (!dialog) return;
  // Back to where the operator was; if that approval has left the list, to the next one.
  if (dialog.opener?.isConnected && !dialog.opener.disabled) dialog.opener.focus();
  else if (state.focus?.approval?.trade_id === dialog.tradeId) $("focus-title").focus();
  else focusAfterRemoval(sortedIds());
}

async function submitDecision(event) {
  event.preventDefault();
  const dialog = state.dialog;
  if (!dialog || dialog.submitting) return;
  const approval = approvalFor(dialog.tradeId);
  if (!approval) return;
  const text = $("decide-text").value.trim();
  const approve = dialog.decision === "approve";
  if (!approve && !text) {
    $("decide-text").setAttribute("aria-invalid", "true");
    $("decide-error").textContent = "Give a reason for the rejection.";
    $("decide-text").focus();
    return;
  }
  dialog.submitting = true;
  state.inflight.add(dialog.tradeId);
  $("decide-confirm").disabled = true;
  dialogStatus(approve ? "Sending the approval…" : "Sending the rejection…");
  // The page's own routes record the WEB channel; the body does not choose it.
  const body = approve ? { comment: text || null } : { reason: text };
  const generation = state.generation;
  try {
    const result = await api(`/approvals/${encodeURIComponent(dialog.tradeId)}/${dialog.decision}`, {
      method: "POST",
      body,
    });
    if (generation !== state.generation) return;
    if (result.status === AWAITING) {
      // 202, four eyes: the first of two approvals is recorded; the approval keeps waiting.
      const waiting = { ...approval, approvers: result.approvers };
      upsert(waiting);
      if (state.focus?.approval?.trade_id === waiting.trade_id) {
        state.focus.approval = { ...state.focus.approval, ...waiting };
        renderFocus();
      }
      renderList();
      closeDialog();
      showOutcome(
        `Your approval of ${tradeName(approval)} is recorded (${approvalsProgress(waiting)}); ` +
          "a second, different operator must approve it before it is accepted.",
        "ok",
      );
      return;
    }
    const decided = { ...approval, ...result, comment: approve ? text || null : text };
    const done = result.status === "ACCEPTED"
      ? `Approved: ${tradeName(approval)} was accepted at ${clock(result.decided_at)}.`
      : `Rejected: ${tradeName(approval)} (${describeOutcome(decided)}).`;
    finish(decided, { own: true });
    logOutcome(decided, describeOutcome(decided));
    closeDialog();
    showOutcome(done, "ok");
  } catch (err) {
    if (generation !== state.generation) return;
    closeDialog();
    showOutcome(errorText(err, approval), "error");
    const standing = err.body?.decision;
    if (standing && ["SEC-012", "SEC-013", "SEC-050"].includes(err.code)) {
      finish({ ...approval, ...standing }, { own: true });
      logOutcome(standing, describeOutcome(standing));
    } else if (err.code === "SEC-013" || err.code === "SEC-012") {
      finish({ ...approval, status: "REJECTED" }, { own: true });
    } else if (err.code === "SEC-020") {
      state.guardian = { ...state.guardian, locked: true };
      renderGuardian();
      refreshGuardian();
    } else if (err.status === 401) {
      signOut("Your token was refused; sign in again.");
    }
  } finally {
    state.inflight.delete(dialog.tradeId);
    tick();
  }
}

// ---------------------------------------------------------------- deep links

function readDeepLink() {
  const match = location.pathname.match(/^\/approvals\/([^/]+)\/?$/);
  if (!match) return null;
  const params = new URLSearchParams(location.search);
  const linkToken = params.get("token");
  if (linkToken !== null) {
    // The token works once; take it out of the address bar and history so that it is neither
    // shared by copying the address nor offered again on reload.
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
  }
  return { tradeId: decodeURIComponent(match[1]), linkToken };
}

async function landOnDeepLink(link) {
  state.focus = { tradeId: link.tradeId, approval: null, note: "Loading the approval…" };
  renderFocus();
  let note = null;
  if (link.linkToken) {
    try {
      // A POST uses the link up; only this page, run by a person, sends it.
      const opened = await api(`/api/hitl/deep-links/${encodeURIComponent(link.linkToken)}`, {
        method: "POST",
        auth: false,
      });
      state.focus.tradeId = opened.trade_id;
      state.focus.approval = fromDetail(opened.approval);
    } catch (err) {
      if (err.code === "SEC-091") note = "This link is invalid, expired or already used.";
      else if (!endpointMissing(err)) note = errorText(err, null);
    }
  }
  if (!state.focus.approval && state.token) await loadFocusApproval();
  if (!state.focus.approval && !state.token) {
    note = `${note ? `${note} ` : ""}Sign in to see this approval.`;
  }
  if (state.focus.approval || note) state.focus.note = note ?? focusNote();
  renderFocus();
  $("focus-title").focus();
}

function fromDetail(detail) {
  // GET /api/hitl/{id} (and a deep link) answer {approval, integrity_ok, snapshot}; a bare
  // approval record is accepted too.
  if (detail?.approval && typeof detail.approval === "object") {
    return { ...detail.approval, integrity_ok: detail.integrity_ok };
  }
  return detail;
}

function focusNote() {
  const approval = state.focus?.approval;
  if (!approval) return null;
  if (!state.token && approval.status === AWAITING) return "Read only: sign in below to decide.";
  return null;
}

async function loadFocusApproval() {
  const focus = state.focus;
  if (!focus) return;
  try {
    focus.approval = fromDetail(await api(`/api/hitl/${encodeURIComponent(focus.tradeId)}`));
    focus.note = null;
  } catch (err) {
    focus.note = err.status === 422 || err.code === "SEC-010"
      ? "There is no approval for this link."
      : errorText(err, null);
    if (err.status === 401) signOut("Your token was refused; sign in again.");
  }
  renderFocus();
}

// ---------------------------------------------------------------- session

async function signIn(event) {
  event.preventDefault();
  const input = $("token-input");
  const token = input.value.trim();
  const error = $("sign-in-error");
  if (!token) {
    error.textContent = "Enter your operator token.";
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  $("sign-in-button").disabled = true;
  state.token = token;
  try {
    // Only an operator may list approvals, so this checks the role as well as the token.
    await api("/api/hitl/pending");
  } catch (err) {
    state.token = null;
    $("sign-in-button").disabled = false;
    error.textContent = err.status === 401
      ? "This token is not recognised."
      : err.status === 403
        ? "This token is not an operator's."
        : `Sign-in failed: ${errorText(err, null)}`;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  input.value = "";
  input.removeAttribute("aria-invalid");
  error.textContent = "";
  $("sign-in-button").disabled = false;
  start();
  if (state.focus) {
    await loadFocusApproval();
    $("focus-title").focus();
  } else {
    $("pending-title").focus();
  }
}

function signOut(message) {
  state.generation += 1;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const timer of state.timers) window.clearInterval(timer);
  state.timers = [];
  const socket = state.socket;
  state.socket = null;
  socket?.close();
  state.rows.clear();
  state.previews.clear();
  state.previewInFlight = false;
  state.finished.clear();
  state.lastEventId = null;
  state.guardian = { locked: false };
  if (state.dialog) closeDialog();
  renderList();
  renderGuardian();
  renderSession();
  if (state.focus) {
    state.focus.note = focusNote();
    renderFocus();
  }
  showOutcome(message ?? "Signed out.", message ? "error" : "ok");
  $("sign-in-error").textContent = message ?? "";
  $("token-input").focus();
}

function start() {
  renderSession();
  connect();
  refreshGuardian();
  state.timers.push(window.setInterval(refreshGuardian, GUARDIAN_POLL_MS));
  state.timers.push(window.setInterval(refreshPreviews, PREVIEW_POLL_MS));
  state.timers.push(
    window.setInterval(() => {
      if (!state.streamLive) refreshPending();
    }, FALLBACK_POLL_MS),
  );
}

// Where the Temporal UI shows an approval (nothing secret, no token needed); without it the
// page simply shows no such link.
async function loadPageConfig() {
  try {
    const response = await fetch("/page-config", { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const config = await response.json();
    if (!/^https?:\/\//.test(config.temporal_ui_url ?? "")) return;
    state.temporalUi = { url: config.temporal_ui_url, namespace: config.namespace };
    renderList();
    if (state.focus?.approval) renderFocus();
  } catch {
    // No link; everything else works without it.
  }
}

function init() {
  loadPageConfig();
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("decide-form").addEventListener("submit", submitDecision);
  $("decide-cancel").addEventListener("click", closeDialog);
  $("decide-text").addEventListener("input", () => {
    $("decide-text").removeAttribute("aria-invalid");
    $("decide-error").textContent = "";
  });
  $("token-input").addEventListener("input", () => $("token-input").removeAttribute("aria-invalid"));
  // Escape closes a modal dialog natively; route it through closeDialog to restore focus.
  $("decide-dialog").addEventListener("cancel", (event) => {
    event.preventDefault();
    if (!state.dialog?.submitting) closeDialog();
  });
  window.setInterval(tick, 1000);
  renderSession();
  if (state.token) start();
  const link = readDeepLink();
  if (link) landOnDeepLink(link);
  else if (!state.token) $("token-input").focus();
}

init();
