// Hearth's page: a chat playground over /v1/chat/completions, a status view over /status, and
// a model manager over Ollama's /api/pull, /api/tags and /api/delete.
// No build step and no dependencies. Text from the model or the user only ever reaches the
// page through textContent or elements built here (answers through markdown.js): never as HTML.
"use strict";

const store = {
  get(name, fallback) {
    try {
      const raw = localStorage.getItem("hearth." + name);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  },
  set(name, value) {
    try {
      localStorage.setItem("hearth." + name, JSON.stringify(value));
    } catch (error) {
      showError("Could not save in the browser's storage (is it full?): " + error.message);
    }
  },
};

const $ = (id) => document.getElementById(id);
function savedConversations() {
  // Whatever another version of the page (or a hand edit) left: keep what has the right shape.
  const saved = store.get("conversations", []);
  if (!Array.isArray(saved)) return [];
  return saved
    .filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages))
    .map((c) => ({
      ...c,
      title: typeof c.title === "string" ? c.title : "Conversation",
      messages: c.messages.filter((m) => m && typeof m.role === "string" && typeof m.content === "string"),
    }));
}

const state = {
  conversations: savedConversations(),
  current: store.get("current", null),
  controller: null, // the running answer's AbortController
  lastTotals: null, // the status view's previous sample, for tokens/s
};

// -- talking to the server -------------------------------------------------------------------

class NeedsKey extends Error {}

function headers(extra = {}) {
  const key = store.get("key", "");
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 401) {
    askForKey(store.get("key", "") ? "That key was not accepted." : "");
    throw new NeedsKey("an API key is needed");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      message = (body.error && (body.error.message || body.error)) || message;
    } catch {}
    throw new Error(message);
  }
  return response;
}

// -- conversations ---------------------------------------------------------------------------

function conversation() {
  return state.conversations.find((c) => c.id === state.current) || null;
}

function save() {
  store.set("conversations", state.conversations);
  store.set("current", state.current);
}

function newConversation() {
  const c = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "New chat", messages: [] };
  state.conversations.unshift(c);
  state.current = c.id;
  save();
  renderConversations();
  renderMessages();
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren();
  for (const c of state.conversations) {
    const li = document.createElement("li");
    li.className = c.id === state.current ? "current" : "";
    const title = document.createElement("span");
    title.textContent = c.title;
    title.title = c.title;
    const remove = document.createElement("button");
    remove.textContent = "×";
    remove.title = "Delete this conversation";
    remove.addEventListener("click", (event) => {
      event.stopPropagation();
      state.conversations = state.conversations.filter((x) => x.id !== c.id);
      if (state.current === c.id) state.current = state.conversations[0]?.id || null;
      save();
      renderConversations();
      renderMessages();
    });
    li.append(title, remove);
    li.addEventListener("click", () => {
      state.current = c.id;
      save();
      renderConversations();
      renderMessages();
    });
    list.append(li);
  }
}

function usageText(usage) {
  if (!usage) return "";
  const parts = [`${usage.prompt_tokens} prompt tokens (${usage.cached_tokens} cached)`, `${usage.completion_tokens} tokens`];
  if (usage.ttft != null) parts.push(`first token ${usage.ttft.toFixed(2)} s`);
  if (usage.tokens_per_second != null) parts.push(`${usage.tokens_per_second.toFixed(1)} tokens/s`);
  if (usage.finish) parts.push(`finish: ${usage.finish}`);
  return parts.join(" · ");
}

function messageElement(message) {
  const div = document.createElement("div");
  div.className = "message " + message.role;
  if (message.role === "user") {
    div.textContent = message.content;
  } else {
    div.append(renderMarkdown(message.content));
    const usage = document.createElement("div");
    usage.className = "usage";
    usage.textContent = usageText(message.usage);
    div.append(usage);
  }
  return div;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  const c = conversation();
  if (!c) return;
  for (const message of c.messages) box.append(messageElement(message));
  for (const [field, id] of [["system", "system"], ["temperature", "temperature"], ["max_tokens", "max-tokens"]]) {
    if (c.settings && c.settings[field] != null) $(id).value = c.settings[field];
  }
  if (c.settings && c.settings.model && [...$("model").options].some((o) => o.value === c.settings.model)) {
    $("model").value = c.settings.model;
  }
  box.scrollTop = box.scrollHeight;
}

function showError(text) {
  const div = document.createElement("div");
  div.className = "message error";
  div.textContent = text;
  $("messages").append(div);
}

// -- sending ---------------------------------------------------------------------------------

function requestBody(c) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of c.messages) messages.push({ role: m.role, content: m.content });
  const body = {
    model: $("model").value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
  };
  const stop = $("stop").value.split("\n").filter((s) => s.length).slice(0, 4);
  if (stop.length) body.stop = stop;
  if ($("json-mode").checked) body.response_format = { type: "json_object" };
  return body;
}

async function send(text) {
  if (!conversation()) newConversation();
  const c = conversation();
  c.messages.push({ role: "user", content: text });
  if (c.title === "New chat") c.title = text.slice(0, 40);
  c.settings = { model: $("model").value, system: $("system").value, temperature: $("temperature").value, max_tokens: $("max-tokens").value };
  save();
  renderConversations();
  renderMessages();

  const answer = { role: "assistant", content: "", usage: null };
  const element = messageElement(answer);
  const body = new MarkdownStream();
  element.firstChild.replaceWith(body.root);
  $("messages").append(element);
  const controller = new AbortController();
  state.controller = controller;
  $("send").textContent = "Stop";
  const started = performance.now();
  let first = null;
  let finish = null;
  let usage = null;
  let failure = null;
  // Pieces come faster than frames, and a long answer is long to render: the answer is
  // painted at most once per animation frame, and each paint renders only its open block
  // (MarkdownStream keeps the finished ones as they are).
  let pending = false;
  const paint = () => {
    pending = false;
    body.update(answer.content);
    $("messages").scrollTop = $("messages").scrollHeight;
  };
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody(c)),
      signal: controller.signal,
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      // Server-sent events end their lines with \r\n, \n or \r.
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, (m, i, all) => (m === "\r" && i === all.length - 1 ? m : "\n"));
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message || "the server reported an error");
          if (chunk.usage) usage = chunk.usage;
          for (const choice of chunk.choices || []) {
            const piece = choice.delta && choice.delta.content;
            if (piece) {
              if (first === null) first = performance.now();
              answer.content += piece;
              if (!pending) {
                pending = true;
                requestAnimationFrame(paint);
              }
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
      }
    }
  } catch (error) {
    if (error.name === "AbortError") finish = "stopped";
    else if (!(error instanceof NeedsKey)) failure = error.message;
  } finally {
    state.controller = null;
    $("send").textContent = "Send";
  }
  const ended = performance.now();
  element.remove();
  if (answer.content || usage) {
    answer.usage = {
      prompt_tokens: usage ? usage.prompt_tokens : 0,
      cached_tokens: usage && usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens || 0 : 0,
      completion_tokens: usage ? usage.completion_tokens : 0,
      ttft: first === null ? null : (first - started) / 1000,
      tokens_per_second: first !== null && usage && ended > first ? usage.completion_tokens / ((ended - first) / 1000) : null,
      finish,
    };
    c.messages.push(answer);
  } else {
    // Nothing came back: the message was not answered. It leaves the conversation (whose
    // turns must alternate) and goes back to the message box, to send again.
    c.messages.pop();
    if (!$("prompt").value) $("prompt").value = text;
  }
  save();
  renderMessages();
  if (failure) showError(failure);
}

// -- models and the key ----------------------------------------------------------------------

async function loadModels() {
  try {
    const response = await api("/v1/models");
    const { data } = await response.json();
    const select = $("model");
    const chosen = select.value || (conversation() && conversation().settings && conversation().settings.model);
    select.replaceChildren();
    for (const model of data) {
      const option = document.createElement("option");
      option.value = option.textContent = model.id;
      select.append(option);
    }
    if (chosen && data.some((m) => m.id === chosen)) select.value = chosen;
  } catch (error) {
    if (!(error instanceof NeedsKey)) showError("Could not list the models: " + error.message);
  }
}

function askForKey(message) {
  $("key-button").hidden = false;
  $("key-error").hidden = !message;
  $("key-error").textContent = message || "";
  $("key-dialog").hidden = false;
  $("key-input").focus();
}

// -- the status view -------------------------------------------------------------------------

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
}

async function refreshStatus() {
  if ($("view-status").hidden) return;
  let status;
  try {
    status = await (await api("/status")).json();
  } catch (error) {
    if (!(error instanceof NeedsKey)) $("status-note").textContent = "Could not read the status: " + error.message;
    return;
  }
  const now = performance.now();
  const previous = state.lastTotals;
  const body = $("models-table").querySelector("tbody");
  body.replaceChildren();
  const totals = {};
  for (const model of status.models) {
    totals[model.name] = model.completion_tokens;
    const row = document.createElement("tr");
    row.dataset.model = model.name;
    cell(row, model.name);
    cell(row, model.loaded ? "yes" : "no");
    cell(row, model.loaded ? `${model.slots_busy} / ${model.slots}` : "–");
    cell(row, model.loaded ? String(model.queue_depth) : "–");
    const lookups = model.prefix_cache_hits + model.prefix_cache_misses;
    cell(row, lookups ? `${Math.round((100 * model.prefix_cache_hits) / lookups)}% of ${lookups}` : "–");
    let rate = "–";
    if (previous && previous.totals[model.name] != null) {
      const seconds = (now - previous.at) / 1000;
      rate = ((model.completion_tokens - previous.totals[model.name]) / seconds).toFixed(1);
    }
    cell(row, rate);
    cell(row, String(model.completion_tokens));
    cell(row, model.flash_attn ? `${model.flash_attn} (${model.flash_attn_source})` : "–");
    if (model.layout_rates) {
      // The measurement behind the choice, as a tooltip: tokens/s per candidate and shape.
      row.lastChild.title = Object.entries(model.layout_rates)
        .map(([mode, rates]) => `${mode}: ` + Object.entries(rates).map(([shape, rate]) => `${shape} ${Math.round(rate)}`).join(", "))
        .join("\n");
    }
    body.append(row);
  }
  state.lastTotals = { at: now, totals };
  $("status-note").textContent = `Up ${Math.round(status.uptime_seconds)} s · updated ${new Date().toLocaleTimeString()}`;
  const keys = $("keys-usage");
  keys.hidden = !status.keys;
  if (status.keys) {
    const rows = $("keys-table").querySelector("tbody");
    rows.replaceChildren();
    for (const key of status.keys) {
      const row = document.createElement("tr");
      for (const value of [key.name, key.requests, key.tokens, key.tokens_last_minute, key.running]) cell(row, String(value));
      rows.append(row);
    }
  }
}

// -- the models view: pull, list, delete (Ollama's /api/pull, /api/tags, /api/delete) --------

function megabytes(bytes) {
  return (bytes / 1e6).toFixed(1) + " MB";
}

async function refreshManaged() {
  let tags;
  try {
    tags = await (await api("/api/tags")).json();
  } catch (error) {
    if (!(error instanceof NeedsKey)) $("manage-note").textContent = "Could not list the models: " + error.message;
    return;
  }
  const rows = $("manage-table").querySelector("tbody");
  rows.replaceChildren();
  for (const model of tags.models) {
    const row = document.createElement("tr");
    cell(row, model.name);
    cell(row, megabytes(model.size));
    cell(row, (model.details && model.details.quantization_level) || "");
    const actions = document.createElement("td");
    const remove = document.createElement("button");
    remove.textContent = "Delete";
    remove.addEventListener("click", () => deleteModel(model.name));
    actions.append(remove);
    row.append(actions);
    rows.append(row);
  }
}

async function deleteModel(name) {
  if (!confirm("Delete " + name + "?")) return;
  try {
    await api("/api/delete", { method: "DELETE", body: JSON.stringify({ model: name }) });
    $("manage-note").textContent = "Deleted " + name + ".";
  } catch (error) {
    if (!(error instanceof NeedsKey)) $("manage-note").textContent = "Could not delete " + name + ": " + error.message;
  }
  refreshManaged();
  loadModels();
}

async function pullModel(reference) {
  const bar = $("pull-bar");
  const text = $("pull-text");
  $("pull-progress").hidden = false;
  $("pull-button").disabled = true;
  bar.removeAttribute("value"); // indeterminate until sizes are known
  text.textContent = "Starting…";
  try {
    const response = await api("/api/pull", { method: "POST", body: JSON.stringify({ model: reference, stream: true }) });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    let last = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (!line) continue;
        last = JSON.parse(line);
        if (last.error) throw new Error(last.error);
        if (last.total) {
          bar.max = last.total;
          bar.value = last.completed || 0;
          text.textContent = `${last.status}: ${megabytes(last.completed || 0)} of ${megabytes(last.total)}`;
        } else {
          text.textContent = last.status;
        }
      }
    }
    if (!last || last.status !== "success") throw new Error("the pull ended before it was done");
    bar.max = 1;
    bar.value = 1;
    text.textContent = "Pulled " + reference + ".";
    $("pull-ref").value = "";
  } catch (error) {
    if (!(error instanceof NeedsKey)) text.textContent = "Could not pull " + reference + ": " + error.message;
  } finally {
    $("pull-button").disabled = false;
  }
  refreshManaged();
  loadModels();
}

// -- wiring ----------------------------------------------------------------------------------

function showView(name) {
  for (const view of ["chat", "status", "models"]) {
    $("view-" + view).hidden = view !== name;
    $("tab-" + view).classList.toggle("active", view === name);
  }
  if (name === "status") {
    state.lastTotals = null;
    refreshStatus();
  }
  if (name === "models") refreshManaged();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  $("new-chat").addEventListener("click", newConversation);
  $("key-button").addEventListener("click", () => askForKey(""));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    store.set("key", $("key-input").value.trim());
    $("key-dialog").hidden = true;
    loadModels();
    refreshStatus();
  });
  $("pull-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const reference = $("pull-ref").value.trim();
    if (reference) pullModel(reference);
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.controller) {
      state.controller.abort();
      return;
    }
    const text = $("prompt").value.trim();
    if (!text || !$("model").value) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  if (store.get("key", "")) $("key-button").hidden = false;
  renderConversations();
  renderMessages();
  loadModels();
  setInterval(refreshStatus, 2000);
});
