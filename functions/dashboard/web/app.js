// The Onysoft dashboard: a buildless ES module on the dashboard API (same stage, relative URLs).
// Sign-in is Cognito's InitiateAuth (USER_PASSWORD_AUTH) called from the browser; the ID token goes to the API
// as `Authorization: Bearer`. Tokens live in sessionStorage (this tab only) so a reload stays signed in; a new
// API key lives only in the create (or rotate) dialog's fields and is wiped when the dialog closes.
// Two-step sign-in (TOTP): set up here (AssociateSoftwareToken, the QR code drawn in the page, VerifySoftwareToken,
// SetUserMFAPreference), offered to everyone and required of the operator (the API answers 403 mfa_required
// until it is on); a sign-in then answers the SOFTWARE_TOKEN_MFA challenge. Sign-out revokes the refresh token.

import qrcode from "./qrcode.js";

const SESSION_KEY = "onysoft.dashboard.session";
const REFRESH_MARGIN_MS = 5 * 60 * 1000; // refresh the ID token five minutes before it expires
const $ = (id) => document.getElementById(id);

const state = {
  config: null, session: null, refreshTimer: null, principal: null, kind: null,
  accounts: [], accountsNext: null, accountSearch: "", accountId: null, keys: [], usage: null, auditNext: null, challenge: null, deleting: null,
  rotating: null,
  margin: null, statement: null, mfaOn: null,
};
const TOTP_ISSUER = "Onysoft";
const EXPIRING_WITHIN_MS = 7 * 86400 * 1000; // a banner for a key that expires within 7 days

// ------------------------------------------------------------------------------------------- helpers

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function announce(text) { $("status").textContent = text; }

function showAlert(message) {
  const alert = $("alert");
  alert.textContent = message || "";
  alert.hidden = !message;
}

function fieldError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

function money(amount, currency, { precise = false } = {}) {
  // `amount` is the API's exact decimal string; Intl formats strings without going through a float.
  // `precise`: every micro-unit (a request's charge is often a fraction of a kuruş or cent).
  const format = new Intl.NumberFormat("en-US", {
    style: "currency", currency, currencyDisplay: "narrowSymbol", minimumFractionDigits: 2, maximumFractionDigits: precise ? 6 : 2,
  });
  return format.format(String(amount));
}

function balanceNode(amount, currency, { precise = false } = {}) {
  const negative = String(amount).trim().startsWith("-");
  if (!negative) return h("span", { class: "balance" }, money(amount, currency, { precise }));
  const owed = String(amount).trim().slice(1);
  return h("span", { class: "balance debt" }, `Debt: ${money(owed, currency, { precise })}`);
}

const relative = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
const exact = new Intl.DateTimeFormat("en-GB", { dateStyle: "medium", timeStyle: "medium", timeZone: "UTC" });

function exactTime(iso) { return `${exact.format(new Date(iso))} UTC`; }

function relativeTime(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  const units = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600],
    ["minute", 60], ["second", 1]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size || unit === "second") {
      if (unit === "second" && Math.abs(seconds) < 45) return "just now";
      return relative.format(Math.round(seconds / size), unit);
    }
  }
  return "";
}

function timeNode(iso, { relativeForm = false, never = "—" } = {}) {
  if (!iso) return h("span", { class: "muted" }, never);
  return h("time", { datetime: iso, title: exactTime(iso) }, relativeForm ? relativeTime(iso) : exactTime(iso));
}

function emptyRow(tbody, columns, text) {
  tbody.replaceChildren(h("tr", {}, h("td", { class: "empty", colspan: columns }, text)));
}

function loading(tbody, columns) {
  tbody.closest("table").setAttribute("aria-busy", "true");
  emptyRow(tbody, columns, "Loading…");
}

function loaded(tbody) { tbody.closest("table").removeAttribute("aria-busy"); }

async function busy(button, work) {
  button.disabled = true;
  try { return await work(); } finally { button.disabled = false; }
}

// ------------------------------------------------------------------------------------------- Cognito

class CognitoError extends Error {
  constructor(type, message) { super(message); this.type = type; }
}

async function cognito(action, body) {
  let response;
  try {
    response = await fetch(state.config.cognitoEndpoint, {
      method: "POST",
      headers: { "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": `AWSCognitoIdentityProviderService.${action}` },
      body: JSON.stringify(body),
    });
  } catch {
    throw new CognitoError("Network", "The sign-in service cannot be reached. Check your connection and try again.");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const type = String(data.__type || "").split("#").pop();
    throw new CognitoError(type, data.message || "Sign-in failed.");
  }
  return data;
}

function signInMessage(error) {
  switch (error.type) {
    case "NotAuthorizedException":
    case "UserNotFoundException":
      return "Incorrect email or password.";
    case "PasswordResetRequiredException": return "Your password must be reset. Ask your administrator.";
    case "UserNotConfirmedException": return "This account is not confirmed yet.";
    case "TooManyRequestsException":
    case "LimitExceededException": return "Too many attempts. Wait a minute and try again.";
    case "InvalidPasswordException": return `That password is not allowed: ${error.message}`;
    case "CodeMismatchException":
    case "EnableSoftwareTokenMFAException": return "That code is not right. Enter the code your app shows now.";
    default: return error.message;
  }
}

function claimsOf(idToken) {
  const payload = idToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  const json = decodeURIComponent(Array.from(atob(payload), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, "0")}`).join(""));
  return JSON.parse(json);
}

function keepSession(result, email, refreshToken) {
  const claims = claimsOf(result.IdToken);
  state.session = {
    idToken: result.IdToken, accessToken: result.AccessToken, refreshToken: refreshToken || result.RefreshToken,
    expiresAt: claims.exp * 1000, email: email || claims.email || "",
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
  scheduleRefresh();
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  const wait = Math.max(0, state.session.expiresAt - Date.now() - REFRESH_MARGIN_MS);
  state.refreshTimer = setTimeout(() => refreshSession().catch(() => signOut("Your session ended. Sign in again.")), wait);
}

async function refreshSession() {
  const data = await cognito("InitiateAuth", {
    ClientId: state.config.clientId, AuthFlow: "REFRESH_TOKEN_AUTH",
    AuthParameters: { REFRESH_TOKEN: state.session.refreshToken },
  });
  keepSession(data.AuthenticationResult, state.session.email, state.session.refreshToken);
}

async function signIn(email, password) {
  const data = await cognito("InitiateAuth", {
    ClientId: state.config.clientId, AuthFlow: "USER_PASSWORD_AUTH",
    AuthParameters: { USERNAME: email, PASSWORD: password },
  });
  await signedIn(data, email);
}

// InitiateAuth's or RespondToAuthChallenge's answer: tokens, or the next challenge's form.
async function signedIn(data, email) {
  if (data.ChallengeName === "NEW_PASSWORD_REQUIRED" || data.ChallengeName === "SOFTWARE_TOKEN_MFA") {
    state.challenge = { email, session: data.Session, name: data.ChallengeName };
    const [view, input] = data.ChallengeName === "NEW_PASSWORD_REQUIRED"
      ? ["new-password", "new-password-input"] : ["mfa-code", "mfa-code-input"];
    showView(view);
    $(input).value = "";
    $(input).focus();
    return;
  }
  if (!data.AuthenticationResult) throw new CognitoError("Challenge", `This sign-in needs ${data.ChallengeName}, which the dashboard does not support yet.`);
  state.challenge = null;
  keepSession(data.AuthenticationResult, email);
  await enterApp();
}

async function answerChallenge(responses) {
  const { email, session, name } = state.challenge;
  let data;
  try {
    data = await cognito("RespondToAuthChallenge", {
      ClientId: state.config.clientId, ChallengeName: name, Session: session,
      ChallengeResponses: { USERNAME: email, ...responses },
    });
  } catch (error) {
    // A wrong code ends Cognito's session: the password must be given again.
    if (name === "SOFTWARE_TOKEN_MFA" && error instanceof CognitoError && error.type === "NotAuthorizedException") {
      state.challenge = null;
      showView("sign-in");
      fieldError("sign-in-error", "The sign-in took too long or had too many wrong codes. Sign in again.");
      return;
    }
    throw error;
  }
  await signedIn(data, email);
}

async function setNewPassword(password) {
  await answerChallenge({ NEW_PASSWORD: password });
}

async function answerMfaCode(code) {
  await answerChallenge({ SOFTWARE_TOKEN_MFA_CODE: code });
}

// ------------------------------------------------------------------------------------------- two-step sign-in

function drawQr(canvas, text) {
  const qr = qrcode(0, "M");
  qr.addData(text);
  qr.make();
  const cell = 6;
  const margin = 4 * cell; // the quiet zone scanners need
  const count = qr.getModuleCount();
  const size = count * cell + 2 * margin;
  canvas.width = size;
  canvas.height = size;
  const context = canvas.getContext("2d");
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, size, size);
  context.fillStyle = "#000000";
  for (let row = 0; row < count; row += 1) {
    for (let col = 0; col < count; col += 1) {
      if (qr.isDark(row, col)) context.fillRect(margin + col * cell, margin + row * cell, cell, cell);
    }
  }
}

async function startMfaSetup({ required = false } = {}) {
  const data = await cognito("AssociateSoftwareToken", { AccessToken: state.session.accessToken });
  const secret = data.SecretCode;
  const label = encodeURIComponent(`${TOTP_ISSUER}:${state.session.email}`);
  drawQr($("mfa-qr"), `otpauth://totp/${label}?secret=${secret}&issuer=${TOTP_ISSUER}`);
  $("mfa-secret").textContent = secret.replace(/(.{4})/g, "$1 ").trim();
  $("mfa-setup-why").textContent = required
    ? "The operator's sign-in must use two-step sign-in: a password alone cannot reach the operator's dashboard."
    : "Optional: a code from your phone at every sign-in keeps your account safe even if your password leaks.";
  $("mfa-setup-later").hidden = required;
  $("mfa-setup-code").value = "";
  fieldError("mfa-setup-error", "");
  $("mfa-open").hidden = true;
  showView("mfa-setup");
  $("mfa-setup-code").focus();
}

async function finishMfaSetup(code) {
  await cognito("VerifySoftwareToken", {
    AccessToken: state.session.accessToken, UserCode: code, FriendlyDeviceName: "Onysoft dashboard",
  });
  await cognito("SetUserMFAPreference", {
    AccessToken: state.session.accessToken, SoftwareTokenMfaSettings: { Enabled: true, PreferredMfa: true },
  });
  state.mfaOn = true;
  $("mfa-secret").textContent = "";
  $("mfa-qr").width = 0;
  await enterApp();
  announce("Two-step sign-in is on.");
}

async function loadMfaState() {
  try {
    const user = await cognito("GetUser", { AccessToken: state.session.accessToken });
    state.mfaOn = (user.UserMFASettingList || []).includes("SOFTWARE_TOKEN_MFA");
  } catch {
    state.mfaOn = null; // unknown: the button stays hidden
  }
  $("mfa-open").hidden = state.mfaOn !== false;
}

function signOut(message) {
  const refreshToken = state.session && state.session.refreshToken;
  clearTimeout(state.refreshTimer);
  state.session = null;
  sessionStorage.removeItem(SESSION_KEY);
  // RevokeToken ends this sign-in's refresh token and the access tokens it issued (the app client has
  // EnableTokenRevocation); an ID token cannot be revoked, so it is short (15 minutes).
  if (refreshToken) cognito("RevokeToken", { Token: refreshToken, ClientId: state.config.clientId }).catch(() => {});
  Object.assign(state, { principal: null, accounts: [], accountsNext: null, accountSearch: "", accountId: null,
    keys: [], usage: null, margin: null, challenge: null, mfaOn: null });
  $("margin").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("mfa-open").hidden = true;
  $("mfa-secret").textContent = "";
  $("password").value = "";
  showAlert("");
  showView("sign-in");
  if (message) fieldError("sign-in-error", message);
  announce("Signed out.");
  $("email").focus();
}

// ------------------------------------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message, code = null) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, { body, headers = {} } = {}) {
  if (state.session.expiresAt - Date.now() < 60_000) await refreshSession();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${state.session.idToken}`, ...(body ? { "Content-Type": "application/json" } : {}), ...headers },
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch {
    throw new ApiError(0, "The dashboard API cannot be reached. Check your connection and try again.");
  }
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    signOut("Your session has ended. Sign in again.");
    throw new ApiError(401, "Your session has ended. Sign in again.");
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data.error && data.error.message) || `The request failed (${response.status}).`,
      data.error && data.error.code);
  }
  return data;
}

// ------------------------------------------------------------------------------------------- views

function showView(name) {
  $("booting").hidden = true;
  for (const id of ["sign-in", "new-password", "mfa-code", "mfa-setup", "app"]) $(id).hidden = id !== name;
}

async function enterApp() {
  showView("app");
  $("sign-out").hidden = false;
  showAlert("");
  loading($("accounts-table").tBodies[0], 6);
  try {
    await loadAccounts();
  } catch (error) {
    if (error instanceof ApiError && error.code === "mfa_required") {
      await startMfaSetup({ required: true });
      return;
    }
    throw error;
  }
  $("main").focus();
  await loadMfaState();
}

// Accounts come a page at a time, by name (issue 23): `search` narrows them, "More accounts" adds the next page.
function accountsQuery(cursor) {
  const query = new URLSearchParams();
  if (state.accountSearch) query.set("search", state.accountSearch);
  if (cursor) query.set("cursor", cursor);
  const text = query.toString();
  return text ? `accounts?${text}` : "accounts";
}

async function loadAccounts(keepSelection = true) {
  const data = await api("GET", accountsQuery(null));
  state.principal = data.principal;
  state.kind = data.principal.split(":")[0];
  state.accounts = data.accounts;
  state.accountsNext = data.next;
  $("accounts-more").hidden = !data.next;
  const who = $("who");
  who.textContent = `${state.session.email} · ${describePrincipal(data.principal)}`;
  who.hidden = false;
  renderAccounts();
  renderNewAccountForm();
  renderAlertsBanner();
  showMargin();
  const still = keepSelection && state.accounts.some((a) => a.account_id === state.accountId);
  if (!still) state.accountId = state.accounts.length ? state.accounts[0].account_id : null;
  await selectAccount(state.accountId);
}

function describePrincipal(principal) {
  const [kind, id] = principal.split(":");
  return { user: "personal account", org: `organization ${id}`, partner: `partner ${id}`, operator: "operator" }[kind] || principal;
}

function renderAccounts() {
  const tbody = $("accounts-table").tBodies[0];
  loaded(tbody);
  if (!state.accounts.length) {
    emptyRow(tbody, 6, state.kind === "partner" ? "No customers yet. Create your first one below."
      : state.kind === "org" ? "No projects yet. Create your first one below." : "No accounts yet.");
    return;
  }
  tbody.replaceChildren(...state.accounts.map((account) => h("tr", { class: account.account_id === state.accountId ? "selected" : null },
    h("td", {}, account.name || h("span", { class: "muted" }, "(no name)")),
    h("td", {}, account.kind.replace("_", " ")),
    h("td", {}, balanceNode(account.balance, account.currency)),
    h("td", { class: "num" }, `${account.markup_pct}%`),
    h("td", { class: "mono" }, account.account_id),
    h("td", {}, h("button", {
      type: "button", class: "secondary small", "aria-label": `Open ${account.name || account.account_id}`,
      "aria-pressed": account.account_id === state.accountId ? "true" : "false",
      onclick: () => selectAccount(account.account_id).catch(report),
    }, "Open")),
  )));
}

const BANNER_MAX = 5;

function renderAlertsBanner() {
  // The accounts whose balance alert fired and no top-up has re-armed yet (the API's `balance_alert`):
  // exhausted (zero or a debt) first.
  const alerted = state.accounts.filter((a) => a.balance_alert)
    .sort((a, b) => (a.balance_alert === "exhausted" ? 0 : 1) - (b.balance_alert === "exhausted" ? 0 : 1));
  const banner = $("alerts-banner");
  banner.hidden = !alerted.length;
  const items = alerted.slice(0, BANNER_MAX).map((account) => {
    const name = account.name || account.account_id;
    const balance = money(account.balance, account.currency, { precise: true });
    return account.balance_alert === "exhausted"
      ? h("li", { class: "exhausted" }, `${name}: balance exhausted (${balance}). Requests are refused until a top-up.`)
      : h("li", {}, `${name}: balance low (${balance}), below its alert at ${money(account.alert_below, account.currency)}.`);
  });
  if (alerted.length > BANNER_MAX) items.push(h("li", {}, `and ${alerted.length - BANNER_MAX} more.`));
  $("alerts-list").replaceChildren(...items);
}

function renderNewAccountForm() {
  const form = $("new-account-form");
  const kind = { partner: "partner_customer", org: "project" }[state.kind];
  form.hidden = !kind;
  if (!kind) return;
  form.dataset.kind = kind;
  $("new-account-title").textContent = kind === "project" ? "New project" : "New customer";
  $("new-account-submit").textContent = kind === "project" ? "Create project" : "Create customer";
  $("new-account-markup-field").hidden = kind === "project"; // a project's markup is the platform's
}

// The platform's ceilings on the account (issue 23): the most one key may have, and the counts against them.
function ceilingsText(c) {
  const used = (n, top) => (n === null || n === undefined ? `${top}` : `${n} of ${top}`);
  const parts = [`rpm ${c.rpm.toLocaleString("en-US")}`, `tpm ${c.tpm.toLocaleString("en-US")}`, `parallel ${c.max_parallel}`,
    `keys ${used(c.keys_used, c.keys)}`];
  if (c.accounts !== null) parts.push(`accounts ${used(c.accounts_used, c.accounts.toLocaleString("en-US"))}`);
  return parts.join(" · ");
}

function currentAccount() { return state.accounts.find((a) => a.account_id === state.accountId) || null; }

async function selectAccount(accountId) {
  state.accountId = accountId;
  renderAccounts();
  const account = currentAccount();
  $("account").hidden = !account;
  if (!account) return;
  $("account-title").textContent = account.name || account.account_id;
  const summary = $("account-summary");
  const item = (term, value) => [h("div", {}, h("dt", {}, term), h("dd", {}, value))];
  summary.replaceChildren(
    ...item("Balance", balanceNode(account.balance, account.currency)),
    ...item("Currency", account.currency),
    ...item("Kind", account.kind.replace("_", " ")),
    ...item("Markup", `${account.markup_pct}%`),
    ...item("Max parallel", account.max_parallel ? `${account.max_parallel} requests in flight` : "No limit"),
    ...item("Account ID", h("span", { class: "mono" }, account.account_id)),
    ...(account.owner ? item("Owner", account.owner) : []),
    ...(account.ceilings ? item("Ceilings", ceilingsText(account.ceilings)) : []),
  );
  const mayMarkup = state.kind === "operator" || (state.kind === "partner" && account.kind.startsWith("partner_"));
  $("markup-form").hidden = !mayMarkup;
  $("markup-input").value = account.markup_pct;
  $("topup-form").hidden = state.kind !== "operator";
  $("topup-hint").textContent = `in ${account.currency}`;
  $("alert-hint").textContent = `in ${account.currency}; empty or 0: no alert`;
  $("alert-below").value = account.alert_below ? account.alert_below.replace(/\.?0+$/, "") : "";
  $("statement-sheet").hidden = true;
  state.statement = null;
  if (!$("statement-month").value) $("statement-month").value = new Date().toISOString().slice(0, 7);
  await Promise.all([loadKeys(), loadUsage(), loadAudit()]);
}

// ------------------------------------------------------------------------------------------- keys

async function loadKeys() {
  const tbody = $("keys-table").tBodies[0];
  loading(tbody, 8);
  const data = await api("GET", `accounts/${encodeURIComponent(state.accountId)}/keys`);
  state.keys = data.keys;
  renderKeys();
}

function limitsText(key) {
  const account = currentAccount();
  const parts = [];
  if (key.rpm) parts.push(`${key.rpm} req/min`);
  if (key.tpm) parts.push(`${key.tpm.toLocaleString("en-US")} tokens/min`);
  if (key.max_parallel) parts.push(`${key.max_parallel} in flight`);
  if (key.models && key.models.length) parts.push(`models: ${key.models.join(", ")}`);
  if (key.spend_limit) parts.push(`spend ≤ ${money(key.spend_limit, account ? account.currency : key.currency)}`);
  if (key.expires_at) parts.push(`expires ${exactTime(key.expires_at)}`);
  return parts.length ? parts.join(" · ") : "Type defaults";
}

function keyLabel(key) { return `“${key.name || key.display}” (${key.display})`; }

function isExpired(key) { return Boolean(key.expires_at) && new Date(key.expires_at).getTime() <= Date.now(); }

function inGrace(key) { return Boolean(key.grace_until) && new Date(key.grace_until).getTime() > Date.now(); }

function keyBanners() {
  // Leaked keys (revoked by a leak report) and keys that expire within 7 days, or have expired: said once, above
  // the table, in words (not only a colour), with what to do.
  const banners = [];
  for (const key of state.keys) {
    if (key.status === "leaked") {
      banners.push(h("div", { class: "banner danger", "data-banner": "leaked", "data-key-id": key.key_id },
        h("strong", {}, `Key ${keyLabel(key)} was found in public and revoked`),
        key.leaked_at ? ` on ${exactTime(key.leaked_at)}` : "", ". ",
        key.leak_url ? ["It was found at ", h("a", { href: key.leak_url, rel: "noreferrer noopener", target: "_blank" },
          key.leak_url), ". "] : "",
        "Requests with it are refused. Create a new key, and remove this one from your code and its history."));
    } else if (key.status === "active" && key.expires_at) {
      const left = new Date(key.expires_at).getTime() - Date.now();
      if (left <= 0) {
        banners.push(h("div", { class: "banner warn", "data-banner": "expired", "data-key-id": key.key_id },
          h("strong", {}, `Key ${keyLabel(key)} expired`), ` ${relativeTime(key.expires_at)} (${exactTime(key.expires_at)}). `,
          "Requests with it are refused."));
      } else if (left <= EXPIRING_WITHIN_MS) {
        banners.push(h("div", { class: "banner warn", "data-banner": "expiring", "data-key-id": key.key_id },
          h("strong", {}, `Key ${keyLabel(key)} expires ${relativeTime(key.expires_at)}`),
          ` (${exactTime(key.expires_at)}). Rotate it or create a new one before then.`));
      }
    }
  }
  $("key-banners").replaceChildren(...banners);
}

function keyStatus(key) {
  const status = isExpired(key) && key.status === "active" ? "expired" : key.status;
  const cell = [h("span", { class: `badge ${status}` }, status)];
  if (key.rotated_at) {
    cell.push(h("div", { class: "muted small-text" }, "Rotated ", timeNode(key.rotated_at, { relativeForm: true })));
  }
  if (key.previous_display && inGrace(key)) {
    cell.push(h("div", { class: "muted small-text grace" }, h("span", { class: "mono" }, key.previous_display),
      " works until ", timeNode(key.grace_until),
      key.previous_last_used_at ? ["; last used ", timeNode(key.previous_last_used_at, { relativeForm: true })] : ""));
  }
  return cell;
}

function renderKeys() {
  const tbody = $("keys-table").tBodies[0];
  loaded(tbody);
  keyBanners();
  if (!state.keys.length) {
    emptyRow(tbody, 8, "No keys yet. Create one with “Create key”.");
    return;
  }
  tbody.replaceChildren(...state.keys.map((key) => {
    const nameId = `key-name-${key.key_id}`;
    const usable = key.status === "active" && !isExpired(key);
    return h("tr", { "data-key-id": key.key_id, class: key.status === "leaked" ? "leaked" : null },
      h("td", { id: nameId }, key.name || h("span", { class: "muted" }, "(no name)")),
      h("td", { class: "mono" }, key.display),
      h("td", {}, key.type.replace("_", " ")),
      h("td", {}, timeNode(key.created_at, { relativeForm: true })),
      h("td", { class: "last-used" }, timeNode(key.last_used_at, { relativeForm: true, never: "Never" })),
      h("td", { class: "status" }, keyStatus(key)),
      h("td", {}, limitsText(key)),
      h("td", { class: "actions" }, h("div", { class: "row-actions" },
        usable ? h("button", {
          type: "button", class: "secondary small", "aria-describedby": nameId,
          onclick: () => openRotate(key),
        }, "Rotate") : null,
        key.status !== "deleted" ? h("button", {
          type: "button", class: "secondary small", "aria-describedby": nameId,
          onclick: () => openDelete(key),
        }, "Delete") : null)),
    );
  }));
}

function openRotate(key) {
  state.rotating = key;
  $("rotate-form").reset();
  $("rotate-form").hidden = false;
  $("rotated").hidden = true;
  $("rotate-dialog").setAttribute("aria-labelledby", "rotate-title");
  $("rotate-text").textContent = `${keyLabel(key)} gets a new secret. Its id, name, limits and usage stay as they are.`;
  fieldError("rotate-error", "");
  $("rotate-dialog").showModal();
  $("rotate-grace").focus();
}

function wipeRotated() {
  // Like the create dialog: the new key is never kept once the dialog closes.
  $("rotated-key").value = "";
  $("rotated-export").value = "";
  $("rotated-copy-status").textContent = "";
  state.rotating = null;
}

async function rotateKey(event) {
  event.preventDefault();
  const key = state.rotating;
  const grace = $("rotate-grace").value;
  // One key per click: a retried request (the network, a proxy) makes no second secret; another click rotates again.
  const idempotencyKey = crypto.randomUUID();
  try {
    const rotated = await busy($("confirm-rotate"), () => api("POST", `keys/${encodeURIComponent(key.key_id)}/rotate`,
      { body: { grace }, headers: { "Idempotency-Key": idempotencyKey } }));
    $("rotate-form").hidden = true;
    $("rotated").hidden = false;
    $("rotate-dialog").setAttribute("aria-labelledby", "rotated-title");
    $("rotated-grace").textContent = grace === "now"
      ? `The old key ${rotated.previous_display} stopped working now.`
      : `The old key ${rotated.previous_display} keeps working until ${exactTime(rotated.grace_until)}.`;
    $("rotated-key").value = rotated.key;
    $("rotated-export").value = `export ONYSOFT_API_KEY=${rotated.key}`;
    $("rotated-key").focus();
    $("rotated-key").select();
    announce("Key rotated. Copy the new key now: it is shown only once.");
    await loadKeys();
    loadAudit().catch(report);
  } catch (error) {
    fieldError("rotate-error", error.message);
  }
}

function openCreate() {
  $("create-form").reset();
  $("create-form").hidden = false;
  $("created").hidden = true;
  fieldError("create-error", "");
  $("create-dialog").showModal();
  $("key-name").focus();
}

function wipeCreated() {
  // The key is never kept: not in the page, not in storage, once the dialog closes.
  $("new-key").value = "";
  $("export-line").value = "";
  $("copy-status").textContent = "";
}

// The dialogs that show a new key, and what forgets it.
const WIPE_ON_CLOSE = { "create-dialog": wipeCreated, "rotate-dialog": wipeRotated };

async function createKey(event) {
  event.preventDefault();
  const name = $("key-name").value.trim();
  if (!name) { fieldError("create-error", "Give the key a name."); $("key-name").focus(); return; }
  const body = { name };
  const rpm = $("key-rpm").value.trim();
  const tpm = $("key-tpm").value.trim();
  const parallel = $("key-parallel").value.trim();
  const models = $("key-models").value.split(",").map((m) => m.trim()).filter(Boolean);
  const expires = $("key-expires").value;
  const spend = $("key-spend").value.trim();
  if (rpm) body.rpm = Number.parseInt(rpm, 10);
  if (tpm) body.tpm = Number.parseInt(tpm, 10);
  if (parallel) body.max_parallel = Number.parseInt(parallel, 10);
  if (models.length) body.models = models;
  if (expires) body.expires_at = new Date(expires).toISOString();
  if (spend) {
    if (!/^[0-9]+(\.[0-9]{1,6})?$/.test(spend)) { fieldError("create-error", "The spend limit is an amount like 25 or 12.50."); return; }
    body.spend_limit = spend;
  }
  const button = event.submitter || $("create-form").querySelector("button[type=submit]");
  try {
    const created = await busy(button, () => api("POST", `accounts/${encodeURIComponent(state.accountId)}/keys`, { body }));
    $("create-form").hidden = true;
    $("created").hidden = false;
    $("new-key").value = created.key;
    $("export-line").value = `export ONYSOFT_API_KEY=${created.key}`;
    $("new-key").focus();
    $("new-key").select();
    announce("Key created. Copy it now: it is shown only once.");
    await loadKeys();
    loadAudit().catch(report);
  } catch (error) {
    fieldError("create-error", error.message);
  }
}

async function copyFrom(inputId, statusId = "copy-status") {
  const text = $(inputId).value;
  try {
    await navigator.clipboard.writeText(text);
    $(statusId).textContent = "Copied to the clipboard.";
  } catch {
    $(inputId).select();
    $(statusId).textContent = "Copying is blocked here: the text is selected, press Ctrl+C (⌘C).";
  }
}

function openDelete(key) {
  state.deleting = key;
  $("delete-text").textContent = `${keyLabel(key)} stops working at once. This cannot be undone.`;
  fieldError("delete-error", "");
  $("delete-dialog").showModal();
  $("delete-dialog").querySelector("[data-close]").focus();
}

async function confirmDelete() {
  const key = state.deleting;
  try {
    await busy($("confirm-delete"), () => api("DELETE", `keys/${encodeURIComponent(key.key_id)}`));
    $("delete-dialog").close();
    announce(`Key ${key.name || key.display} deleted.`);
    await loadKeys();
    loadAudit().catch(report);
  } catch (error) {
    fieldError("delete-error", error.message);
  }
}

// ------------------------------------------------------------------------------------------- usage

function isoDay(date) { return date.toISOString().slice(0, 10); }

function usageRange() {
  const from = $("usage-from").value;
  const to = $("usage-to").value;
  const end = new Date(`${to}T00:00:00Z`);
  end.setUTCDate(end.getUTCDate() + 1); // the whole "to" day
  return { from: `${from}T00:00:00Z`, to: end.toISOString().replace(".000Z", "Z") };
}

async function loadUsage() {
  if (!$("usage-from").value) {
    const today = new Date();
    const start = new Date(today.getTime() - 29 * 86400000);
    $("usage-from").value = isoDay(start);
    $("usage-to").value = isoDay(today);
  }
  const tbody = $("usage-table").tBodies[0];
  loading(tbody, 5);
  $("usage-chart").replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const { from, to } = usageRange();
  const query = new URLSearchParams({ from, to, limit: "1" });
  const data = await api("GET", `accounts/${encodeURIComponent(state.accountId)}/usage?${query}`);
  state.usage = data;
  renderUsage();
}

function renderUsage() {
  const totals = state.usage.totals;
  const currency = state.usage.currency;
  const tbody = $("usage-table").tBodies[0];
  loaded(tbody);
  if (!totals.by_model.length) {
    emptyRow(tbody, 5, "No requests in this range.");
  } else {
    tbody.replaceChildren(...totals.by_model.map((row) => h("tr", {},
      h("td", { class: "mono" }, row.model || "(unknown)"),
      h("td", { class: "num" }, row.requests.toLocaleString("en-US")),
      h("td", { class: "num" }, row.prompt_tokens.toLocaleString("en-US")),
      h("td", { class: "num" }, row.completion_tokens.toLocaleString("en-US")),
      h("td", { class: "num" }, money(row.charge, currency, { precise: true })),
    )));
  }
  renderChart(totals.by_day, currency);
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function renderChart(byDay, currency) {
  const chart = $("usage-chart");
  if (!byDay.length) { chart.replaceChildren(h("p", { class: "muted" }, "No usage to chart in this range.")); return; }
  // One bar per day of the range (days without requests included), height = requests that day.
  const { from, to } = usageRange();
  const days = [];
  for (let day = new Date(from); day < new Date(to); day.setUTCDate(day.getUTCDate() + 1)) days.push(isoDay(day));
  const byName = Object.fromEntries(byDay.map((d) => [d.day, d]));
  const width = 720; const height = 180; const left = 36; const bottom = 22; const top = 10;
  const max = Math.max(1, ...byDay.map((d) => d.requests));
  const step = (width - left) / days.length;
  const bars = days.map((day, i) => {
    const entry = byName[day];
    const requests = entry ? entry.requests : 0;
    const barHeight = ((height - top - bottom) * requests) / max;
    const label = `${day}: ${requests} request${requests === 1 ? "" : "s"}${entry ? `, ${money(entry.charge, currency)}` : ""}`;
    return svg("rect", { class: "bar", x: left + i * step + step * 0.15, y: height - bottom - barHeight,
      width: Math.max(1, step * 0.7), height: barHeight }, svg("title", {}, label));
  });
  const anchors = ["start", "middle", "end"];
  const labels = [0, Math.floor(days.length / 2), days.length - 1].map((i, n) => ({ i, anchor: anchors[n] }))
    .filter(({ i }, n, all) => all.findIndex((l) => l.i === i) === n)
    .map(({ i, anchor }) => svg("text", {
      x: anchor === "start" ? left + i * step : anchor === "end" ? left + (i + 1) * step : left + i * step + step / 2,
      y: height - 6, "text-anchor": anchor,
    }, days[i].slice(5)));
  const graphic = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "usage-chart-title" },
    svg("title", { id: "usage-chart-title" }, `Requests per day, ${days[0]} to ${days[days.length - 1]}: ${state.usage.totals.total.requests} in all`),
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width, y2: height - bottom }),
    svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, max),
    svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end" }, 0),
    ...bars, ...labels);
  chart.replaceChildren(graphic);
}

function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  // Quote everything; a leading = + - @ would make a spreadsheet run it as a formula.
  return `"${(/^[=+\-@]/.test(text) ? `'${text}` : text).replace(/"/g, '""')}"`;
}

async function exportCsv(event) {
  const { from, to } = usageRange();
  const columns = ["created_at", "request_id", "key_id", "model", "status", "prompt_tokens", "completion_tokens", "charge", "currency"];
  const rows = [columns.join(",")];
  await busy(event.currentTarget, async () => {
    let cursor = null;
    for (let page = 0; page < 50; page += 1) {
      const query = new URLSearchParams({ from, to, limit: "1000", ...(cursor ? { cursor } : {}) });
      const data = await api("GET", `accounts/${encodeURIComponent(state.accountId)}/usage?${query}`);
      for (const record of data.records) rows.push(columns.map((c) => csvCell(record[c])).join(","));
      cursor = data.next;
      if (!cursor) break;
    }
  });
  const url = URL.createObjectURL(new Blob([`${rows.join("\r\n")}\r\n`], { type: "text/csv" }));
  const link = h("a", { href: url, download: `onysoft-usage-${state.accountId}-${from.slice(0, 10)}-${$("usage-to").value}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  announce(`Exported ${rows.length - 1} usage records.`);
}

// ------------------------------------------------------------------------------------------- margin

// The operator's margin (every account: charged, provider cost, margin) and a partner's revenue (its own
// accounts: what they were charged; the providers' cost and the platform's margin are not the partner's).
const GROUP_LABEL = { account: "Account", partner: "Partner", model: "Model", day: "Day" };
const GROUP_FIELD = { account: "account_id", partner: "partner", model: "model", day: "day" };
const MARGIN_CHART_ROWS = 40;

function showMargin() {
  const allowed = state.kind === "operator" || state.kind === "partner";
  const section = $("margin");
  const first = section.hidden && allowed;
  section.hidden = !allowed;
  if (!allowed) return;
  $("margin-title").textContent = state.kind === "operator" ? "Margin" : "Revenue";
  $("margin-scope").textContent = state.kind === "operator"
    ? "Every account: what was charged, what the providers billed, and the margin, in USD at the rates pinned on each request."
    : "Your customers and projects: what each was charged, and in USD at the rates pinned on each request.";
  if (first) {
    const today = new Date();
    $("margin-from").value = isoDay(new Date(today.getTime() - 29 * 86400000));
    $("margin-to").value = isoDay(today);
    loadMargin().catch(report);
  }
}

async function loadMargin() {
  const tbody = $("margin-table").tBodies[0];
  loading(tbody, 8);
  $("margin-chart").replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const query = new URLSearchParams({ from: $("margin-from").value, to: $("margin-to").value, by: $("margin-by").value });
  try {
    state.margin = await api("GET", `reports/margin?${query}`);
  } catch (error) {
    loaded(tbody);
    emptyRow(tbody, 8, "The report could not be loaded.");
    $("margin-chart").replaceChildren();
    throw error;
  }
  renderMargin();
}

function usd(amount) { return money(amount, "USD", { precise: true }); }

function pct(value) { return value === null || value === undefined ? "—" : `${value}%`; }

function groupName(report, row) {
  const value = row[GROUP_FIELD[report.by]];
  if (report.by === "account") return row.name ? `${row.name} (${value})` : value;
  if (report.by === "partner") return value || "Platform (no partner)";
  return value || "(unknown)";
}

function groupCell(report, row) {
  // An account: its name, and its id below (both in the row header's accessible name).
  if (report.by !== "account" || !row.name) return [groupName(report, row)];
  return [row.name, h("br"), h("span", { class: "mono muted small-id" }, row.account_id)];
}

function chartName(report, row) {
  return report.by === "account" && row.name ? row.name : groupName(report, row);
}

function renderMargin() {
  const report = state.margin;
  const showCost = report.scope === "platform";
  const label = GROUP_LABEL[report.by];
  $("margin-caption").textContent = `${showCost ? "Margin" : "Revenue"} by ${label.toLowerCase()}, ${report.from} to ${report.to}`;
  const columns = [label, "Currency", "Requests", "Charged", "Charged (USD)"];
  if (showCost) columns.push("Provider cost (USD)", "Margin (USD)", "Margin %");
  $("margin-table").tHead.rows[0].replaceChildren(...columns.map((name, i) => h("th", { scope: "col", class: i >= 2 ? "num" : null }, name)));
  const tbody = $("margin-table").tBodies[0];
  loaded(tbody);
  if (!report.rows.length) emptyRow(tbody, columns.length, "No usage in these days.");
  else {
    tbody.replaceChildren(...report.rows.map((row) => h("tr", {},
      h("th", { scope: "row", class: report.by === "model" ? "mono" : null }, ...groupCell(report, row)),
      h("td", {}, row.currency),
      h("td", { class: "num" }, row.requests.toLocaleString("en-US")),
      h("td", { class: "num" }, money(row.charged, row.currency, { precise: true })),
      h("td", { class: "num" }, usd(row.charged_usd)),
      ...(showCost ? [
        h("td", { class: "num" }, usd(row.provider_cost_usd)),
        h("td", { class: row.margin_usd_micros < 0 ? "num loss" : "num" }, usd(row.margin_usd)),
        h("td", { class: "num" }, pct(row.margin_pct)),
      ] : []),
    )));
  }
  const totals = report.totals;
  const item = (term, value) => h("div", {}, h("dt", {}, term), h("dd", {}, value));
  const charged = totals.charged_by_currency.map((c) => money(c.charged, c.currency, { precise: true })).join(" + ") || "—";
  $("margin-totals").replaceChildren(
    item("Requests", totals.requests.toLocaleString("en-US")),
    item("Charged", charged),
    item("Charged (USD)", usd(totals.charged_usd)),
    ...(showCost ? [item("Provider cost (USD)", usd(totals.provider_cost_usd)),
      item("Margin (USD)", `${usd(totals.margin_usd)} (${pct(totals.margin_pct)})`)] : []),
  );
  const note = $("margin-note");
  note.hidden = !totals.uncosted_requests;
  note.textContent = totals.uncosted_requests ? `${totals.uncosted_requests} settled requests were counted before USD figures were kept: their charges are in “Charged” only.` : "";
  renderMarginChart(report, showCost);
}

function renderMarginChart(report, showCost) {
  const chart = $("margin-chart");
  const rows = report.rows.slice(0, MARGIN_CHART_ROWS);
  if (!rows.length) { chart.replaceChildren(); return; }
  // One bar per row: its charges in USD; for the operator split into what the providers billed and the margin
  // (a loss, where the providers billed more, shown past the charges in red).
  const width = 720; const labelWidth = 230; const barRow = 22; const top = 26; const right = 10;
  const height = top + rows.length * barRow + 6;
  const value = (micros) => Math.max(0, Number(micros));
  const max = Math.max(1, ...rows.map((r) => Math.max(value(r.charged_usd_micros), showCost ? value(r.provider_cost_usd_micros) : 0)));
  const scale = (micros) => ((width - labelWidth - right) * value(micros)) / max;
  const bars = rows.map((row, i) => {
    const y = top + i * barRow;
    const name = `${chartName(report, row)} · ${row.currency}`;
    const parts = [svg("text", { class: "row-label", x: labelWidth - 6, y: y + 14, "text-anchor": "end" }, name.length > 34 ? `${name.slice(0, 33)}…` : name)];
    const x = labelWidth;
    const charged = row.charged_usd_micros;
    let summary = `${name}: ${row.requests} requests, charged ${usd(row.charged_usd)}`;
    if (showCost) {
      const cost = row.provider_cost_usd_micros;
      parts.push(svg("rect", { class: "cost", x, y: y + 3, width: scale(Math.min(cost, charged)), height: barRow - 6 }));
      if (charged > cost) parts.push(svg("rect", { class: "margin", x: x + scale(cost), y: y + 3, width: scale(charged - cost), height: barRow - 6 }));
      if (cost > charged) parts.push(svg("rect", { class: "loss", x: x + scale(charged), y: y + 3, width: scale(cost - charged), height: barRow - 6 }));
      summary += `, provider cost ${usd(row.provider_cost_usd)}, margin ${usd(row.margin_usd)} (${pct(row.margin_pct)})`;
    } else {
      parts.push(svg("rect", { class: "charged", x, y: y + 3, width: scale(charged), height: barRow - 6 }));
    }
    return svg("g", {}, svg("title", {}, summary), ...parts);
  });
  const legend = showCost ? [
    svg("rect", { class: "cost", x: labelWidth, y: 6, width: 12, height: 12 }), svg("text", { x: labelWidth + 16, y: 16 }, "Provider cost"),
    svg("rect", { class: "margin", x: labelWidth + 110, y: 6, width: 12, height: 12 }), svg("text", { x: labelWidth + 126, y: 16 }, "Margin"),
    svg("rect", { class: "loss", x: labelWidth + 190, y: 6, width: 12, height: 12 }), svg("text", { x: labelWidth + 206, y: 16 }, "Loss"),
  ] : [svg("rect", { class: "charged", x: labelWidth, y: 6, width: 12, height: 12 }), svg("text", { x: labelWidth + 16, y: 16 }, "Charged (USD)")];
  const totals = report.totals;
  const title = showCost
    ? `Margin by ${report.by}, ${report.from} to ${report.to}: charged ${usd(totals.charged_usd)}, provider cost ${usd(totals.provider_cost_usd)}, margin ${usd(totals.margin_usd)} (${pct(totals.margin_pct)})`
    : `Revenue by ${report.by}, ${report.from} to ${report.to}: charged ${usd(totals.charged_usd)}`;
  chart.replaceChildren(svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "margin-chart-title" },
    svg("title", { id: "margin-chart-title" }, title), ...legend, ...bars));
}

// ------------------------------------------------------------------------------------------- statement

// A month's statement: opening balance, each top-up (who, idempotency key), charges by model and by key, debts,
// closing balance (closing = opening + top-ups − charges). Printable (the page prints the statement alone).
const MONTH_NAME = new Intl.DateTimeFormat("en-GB", { month: "long", year: "numeric", timeZone: "UTC" });

async function loadStatement() {
  const month = $("statement-month").value;
  if (!/^\d{4}-\d{2}$/.test(month)) { showAlert("Choose a month."); $("statement-month").focus(); return; }
  const query = new URLSearchParams({ month });
  state.statement = await api("GET", `accounts/${encodeURIComponent(state.accountId)}/statement?${query}`);
  showAlert("");
  renderStatement();
}

function renderStatement() {
  const doc = state.statement;
  const currency = doc.currency;
  const amount = (value, extra = {}) => h("span", { class: "balance", ...extra }, money(value, currency, { precise: true }));
  $("statement-sheet").hidden = false;
  $("statement-heading").textContent = `Statement · ${doc.name || doc.account_id} · ${MONTH_NAME.format(new Date(`${doc.month}-01T00:00:00Z`))}`;
  $("statement-status").textContent = doc.status === "closed"
    ? `Closed: final. Account ${doc.account_id}, ${currency}; UTC days ${doc.from.slice(0, 10)} to ${doc.to.slice(0, 10)} (excluded).`
    : `Open: the month is not over (or not two days past), so these figures may still change. Account ${doc.account_id}, ${currency}.`;
  const item = (term, value) => h("div", {}, h("dt", {}, term), h("dd", {}, value));
  $("statement-summary").replaceChildren(
    item("Opening balance", balanceNode(doc.opening_balance, currency, { precise: true })),
    item("Top-ups", amount(doc.topups)),
    item("Charges", amount(doc.charges)),
    item("Closing balance", balanceNode(doc.closing_balance, currency, { precise: true })),
    item("Debts (overruns)", amount(doc.debts)),
    item("Requests", `${doc.requests.toLocaleString("en-US")} (${doc.failed_requests} failed, free)`),
  );
  const lines = $("statement-lines").tBodies[0];
  lines.replaceChildren(...doc.lines.map((line) => {
    const total = line.type === "opening_balance" || line.type === "closing_balance";
    return h("tr", { class: total ? "total" : null },
      h("td", {}, statementDate(doc, line)),
      h(total ? "th" : "td", total ? { scope: "row" } : {}, line.description,
        line.debt_micros ? h("span", { class: "muted" }, ` (debt ${money(line.debt, currency, { precise: true })})`) : null),
      h("td", { class: "num" }, line.requests === undefined ? "" : line.requests.toLocaleString("en-US")),
      h("td", { class: line.amount_micros < 0 ? "num amount negative" : "num amount" }, money(line.amount, currency, { precise: true })),
      h("td", { class: "mono" }, line.idempotency_key || ""),
      h("td", {}, line.type === "topup" ? (line.made_by_person ? `${line.made_by} (${line.made_by_person})` : line.made_by) : ""),
    );
  }));
  const keys = $("statement-keys").tBodies[0];
  if (!doc.charges_by_key.length) emptyRow(keys, 4, "No charges this month.");
  else {
    keys.replaceChildren(...doc.charges_by_key.map((key) => h("tr", {},
      h("td", { class: "mono" }, key.display), h("td", {}, key.name || "—"),
      h("td", { class: "num" }, key.requests.toLocaleString("en-US")),
      h("td", { class: "num" }, money(key.charge, currency, { precise: true })),
    )));
  }
  announce(`Statement for ${doc.month} loaded.`);
}

const DAY_NAME = new Intl.DateTimeFormat("en-GB", { dateStyle: "medium", timeZone: "UTC" });

function statementDate(doc, line) {
  // The balances are the month's ends (its first instant, and the last before the next month's); top-ups have
  // their time; charges are the month's.
  if (line.type === "opening_balance") return `Start of ${DAY_NAME.format(new Date(doc.from))}`;
  if (line.type === "closing_balance") return `End of ${DAY_NAME.format(new Date(new Date(doc.to).getTime() - 1))}`;
  return line.date ? timeNode(line.date) : h("span", { class: "muted" }, "in the month");
}

async function downloadStatementCsv(event) {
  const doc = state.statement;
  await busy(event.currentTarget, async () => {
    if (state.session.expiresAt - Date.now() < 60_000) await refreshSession();
    const query = new URLSearchParams({ month: doc.month, format: "csv" });
    const response = await fetch(`accounts/${encodeURIComponent(doc.account_id)}/statement?${query}`,
      { headers: { Authorization: `Bearer ${state.session.idToken}` } });
    if (!response.ok) throw new ApiError(response.status, `The CSV could not be downloaded (${response.status}).`);
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: `statement-${doc.account_id}-${doc.month}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  });
  announce(`Downloaded the statement for ${doc.month} as CSV.`);
}

// ------------------------------------------------------------------------------------------- audit

function detailValue(value) {
  if (value && typeof value === "object" && "from" in value && "to" in value) return `${detailValue(value.from)} → ${detailValue(value.to)}`;
  if (value && typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function auditDetails(record) {
  const parts = [];
  for (const [name, value] of Object.entries(record.details || {})) {
    if (value === null || value === undefined || name.endsWith("_micros")) continue; // the decimal twin says it
    parts.push(`${name.replace(/_pct$/, " %").replace(/_/g, " ")}: ${detailValue(value)}`);
  }
  if (record.key_id && !parts.some((p) => p.startsWith("display"))) parts.unshift(record.key_id);
  return parts.join(" · ");
}

async function loadAudit(more = false) {
  const tbody = $("audit-table").tBodies[0];
  if (!more) loading(tbody, 4);
  const query = new URLSearchParams({ account_id: state.accountId, limit: "25" });
  if (more && state.auditNext) query.set("cursor", state.auditNext);
  const data = await api("GET", `audit?${query}`);
  state.auditNext = data.next;
  loaded(tbody);
  const rows = data.records.map((record) => h("tr", {},
    h("td", {}, timeNode(record.at)),
    h("td", {}, record.action.replace(/[._]/g, " ")),
    h("td", {}, record.actor),
    h("td", {}, auditDetails(record)),
  ));
  if (more) tbody.append(...rows);
  else if (rows.length) tbody.replaceChildren(...rows);
  else emptyRow(tbody, 4, "Nothing recorded yet.");
  $("audit-more").hidden = !state.auditNext;
}

// ------------------------------------------------------------------------------------------- accounts

async function createAccount(event) {
  event.preventDefault();
  const form = $("new-account-form");
  const name = $("new-account-name").value.trim();
  if (!name) { showAlert("Give the new account a name."); $("new-account-name").focus(); return; }
  const body = { kind: form.dataset.kind, name };
  const markup = $("new-account-markup").value.trim();
  if (markup && form.dataset.kind !== "project") body.markup_pct = markup;
  try {
    const created = await busy($("new-account-submit"), () => api("POST", "accounts", { body }));
    form.reset();
    showAlert("");
    state.accountId = created.account_id;
    announce(`Created ${created.name}.`);
    await loadAccounts();
  } catch (error) { report(error); }
}

async function saveMarkup(event) {
  event.preventDefault();
  const value = $("markup-input").value.trim();
  if (!value) return;
  try {
    await busy(event.submitter, () => api("PATCH", `accounts/${encodeURIComponent(state.accountId)}`, { body: { markup_pct: value } }));
    showAlert("");
    announce(`Markup set to ${value}%.`);
    await loadAccounts();
  } catch (error) { report(error); }
}

async function saveAlert(event) {
  event.preventDefault();
  const value = $("alert-below").value.trim() || "0";
  if (!/^[0-9]+(\.[0-9]{1,6})?$/.test(value)) {
    showAlert("The alert is an amount like 50 or 12.50 (0: no alert).");
    $("alert-below").focus();
    return;
  }
  try {
    const account = await busy(event.submitter, () => api("PATCH", `accounts/${encodeURIComponent(state.accountId)}`,
      { body: { alert_below: value } }));
    showAlert("");
    announce(account.alert_below ? `You will be alerted below ${money(account.alert_below, account.currency)}.` : "Balance alert removed.");
    await loadAccounts();
  } catch (error) { report(error); }
}

async function topUp(event) {
  event.preventDefault();
  const amount = $("topup-amount").value.trim();
  if (!/^[0-9]+(\.[0-9]{1,6})?$/.test(amount) || /^0+(\.0+)?$/.test(amount)) {
    showAlert("The amount is a positive number like 100 or 12.50.");
    $("topup-amount").focus();
    return;
  }
  // One key per click: a retried request (the network, a proxy) is not added twice; another click is a new top-up.
  const idempotencyKey = crypto.randomUUID();
  try {
    const account = await busy(event.submitter, () => api("POST", `accounts/${encodeURIComponent(state.accountId)}/topup`,
      { body: { amount }, headers: { "Idempotency-Key": idempotencyKey } }));
    $("topup-amount").value = "";
    showAlert("");
    announce(`Added ${money(amount, account.currency)}. The balance is ${money(account.balance, account.currency)}.`);
    await loadAccounts();
  } catch (error) { report(error); }
}

function report(error) {
  if (error instanceof ApiError && error.status === 401) return;
  showAlert(error.message || String(error));
}

// ------------------------------------------------------------------------------------------- start

function wire() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const email = $("email").value.trim();
    const password = $("password").value;
    if (!email || !password) { fieldError("sign-in-error", "Enter your email and password."); return; }
    fieldError("sign-in-error", "");
    try {
      await busy(event.submitter, () => signIn(email, password));
      $("password").value = "";
    } catch (error) {
      fieldError("sign-in-error", error instanceof CognitoError ? signInMessage(error) : error.message);
    }
  });
  $("new-password-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    fieldError("new-password-error", "");
    try {
      await busy(event.submitter, () => setNewPassword($("new-password-input").value));
      $("new-password-input").value = "";
    } catch (error) {
      fieldError("new-password-error", error instanceof CognitoError ? signInMessage(error) : error.message);
    }
  });
  $("mfa-code-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const code = $("mfa-code-input").value.replace(/\s/g, "");
    if (!/^[0-9]{6}$/.test(code)) { fieldError("mfa-code-error", "Enter the six digits your app shows."); return; }
    fieldError("mfa-code-error", "");
    try {
      await busy(event.submitter, () => answerMfaCode(code));
    } catch (error) {
      $("mfa-code-input").value = "";
      fieldError("mfa-code-error", error instanceof CognitoError ? signInMessage(error) : error.message);
    }
  });
  $("mfa-setup-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const code = $("mfa-setup-code").value.replace(/\s/g, "");
    if (!/^[0-9]{6}$/.test(code)) { fieldError("mfa-setup-error", "Enter the six digits your app shows."); return; }
    fieldError("mfa-setup-error", "");
    try {
      await busy(event.submitter, () => finishMfaSetup(code));
    } catch (error) {
      $("mfa-setup-code").value = "";
      fieldError("mfa-setup-error", error instanceof CognitoError ? signInMessage(error) : error.message);
    }
  });
  $("mfa-setup-later").addEventListener("click", () => enterApp().catch(report));
  $("mfa-open").addEventListener("click", () => startMfaSetup().catch(report));
  $("sign-out").addEventListener("click", () => signOut());
  $("account-search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.accountSearch = $("account-search").value.trim();
    loadAccounts(false).catch(report);
  });
  $("accounts-more").addEventListener("click", async () => {
    try {
      const data = await busy($("accounts-more"), () => api("GET", accountsQuery(state.accountsNext)));
      state.accounts = state.accounts.concat(data.accounts);
      state.accountsNext = data.next;
      $("accounts-more").hidden = !data.next;
      renderAccounts();
    } catch (error) { report(error); }
  });
  $("create-key").addEventListener("click", openCreate);
  $("create-form").addEventListener("submit", createKey);
  // A new key leaves the page the moment its dialog closes: wiped before close() (a Close/Done button) or on
  // Escape's `cancel`, both before the dialog hides; `close` itself fires a task later, so it is only a backstop.
  for (const [id, wipe] of Object.entries(WIPE_ON_CLOSE)) {
    $(id).addEventListener("cancel", wipe);
    $(id).addEventListener("close", wipe);
  }
  $("copy-key").addEventListener("click", () => copyFrom("new-key"));
  $("copy-export").addEventListener("click", () => copyFrom("export-line"));
  $("confirm-delete").addEventListener("click", confirmDelete);
  $("rotate-form").addEventListener("submit", rotateKey);
  $("copy-rotated").addEventListener("click", () => copyFrom("rotated-key", "rotated-copy-status"));
  $("copy-rotated-export").addEventListener("click", () => copyFrom("rotated-export", "rotated-copy-status"));
  for (const button of document.querySelectorAll("dialog [data-close]")) {
    button.addEventListener("click", () => {
      const dialog = button.closest("dialog");
      WIPE_ON_CLOSE[dialog.id]?.();
      dialog.close();
    });
  }
  $("usage-form").addEventListener("submit", (event) => { event.preventDefault(); loadUsage().catch(report); });
  $("usage-csv").addEventListener("click", (event) => exportCsv(event).catch(report));
  $("audit-more").addEventListener("click", () => loadAudit(true).catch(report));
  $("new-account-form").addEventListener("submit", createAccount);
  $("markup-form").addEventListener("submit", saveMarkup);
  $("topup-form").addEventListener("submit", topUp);
  $("alert-form").addEventListener("submit", saveAlert);
  $("margin-form").addEventListener("submit", (event) => { event.preventDefault(); loadMargin().catch(report); });
  $("statement-form").addEventListener("submit", (event) => { event.preventDefault(); loadStatement().catch(report); });
  $("statement-print").addEventListener("click", () => window.print());
  $("statement-csv").addEventListener("click", (event) => downloadStatementCsv(event).catch(report));
}

async function start() {
  wire();
  try {
    const response = await fetch("config.json");
    state.config = await response.json();
  } catch {
    $("booting").textContent = "The dashboard could not load its settings. Reload the page to try again.";
    return;
  }
  const saved = sessionStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      state.session = JSON.parse(saved);
      if (state.session.expiresAt - Date.now() < REFRESH_MARGIN_MS) await refreshSession();
      else scheduleRefresh();
      await enterApp();
      return;
    } catch {
      state.session = null;
      sessionStorage.removeItem(SESSION_KEY);
    }
  }
  showView("sign-in");
}

start();
