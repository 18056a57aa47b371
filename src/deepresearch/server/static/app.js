// The deepresearch page: ask, watch the research live, read the cited answer, follow up.
// No build step: plain modern JavaScript, served as is (docs/design.md says why).
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["completed", "error", "timeout", "no_answer", "cancelled"]);
const OUTCOME = {
  completed: ["Research complete", "good"],
  error: ["The research failed", "bad"],
  timeout: ["The research timed out", "bad"],
  no_answer: ["No answer was found", "bad"],
  cancelled: ["Cancelled", "bad"],
};
const KEY_STORE = "deepresearch.apiKey";

const state = {
  key: localStorage.getItem(KEY_STORE) || "",
  conversationId: null,
  running: null, // {sessionId, view, controller}
  generation: 0, // bumps when the thread is replaced; stale followers stop
};

class AuthNeeded extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  if (options.json !== undefined) {
    headers.set("Content-Type", "application/json");
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    showKeyForm(state.key ? "That key was not accepted." : "");
    throw new AuthNeeded();
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.error === "string" ? body.error : JSON.stringify(body.error);
  } catch {
    return `HTTP ${response.status}`;
  }
}

// ---- server-sent events over fetch (EventSource cannot POST or send a key) ------------

async function readEvents(response, onEvent, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", id = null, data = [];
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (data.length) onEvent({ id, data: JSON.parse(data.join("\n")) });
          id = null; data = [];
        } else if (line.startsWith("id:")) id = Number(line.slice(3).trim());
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (signal && signal.aborted) return;
    }
  } finally {
    reader.releaseLock();
  }
}

// ---- one turn: a question and the research that answers it ---------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function sourceLabel(url) {
  if (!url) return "";
  try {
    const host = new URL(url).hostname.replace(/^www\./, "");
    return host.includes("pubmed") ? "PubMed" : host;
  } catch {
    return "source";
  }
}

class TurnView {
  constructor(question) {
    this.lastSeq = 0;
    this.done = false;
    this.sessionId = null;
    this.citations = [];
    this.root = el("article", "turn");
    this.root.setAttribute("aria-label", "Question and answer");
    this.question = el("div", "question", question || "");
    this.progress = el("div", "progress");
    this.queueLine = el("p", "line queue");
    this.queueLine.hidden = true;
    this.progress.append(this.queueLine);
    this.answer = el("section", "answer");
    this.answer.hidden = true;
    this.answer.setAttribute("aria-label", "Answer");
    this.outcome = el("p", "outcome");
    this.outcome.setAttribute("role", "status");
    this.root.append(this.question, this.progress, this.answer, this.outcome);
    this.round = null;
    this.tool = null;
    this.answer.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-cite]");
      if (button) openSource(this.citations, Number(button.dataset.cite));
    });
  }

  apply(event) {
    const kind = event.type;
    if (event.session_id) this.sessionId = event.session_id;
    if (kind === "session_start") {
      if (!this.question.textContent) this.question.textContent = event.question;
    } else if (kind === "queued") {
      this.queueLine.hidden = false;
      this.queueLine.textContent = `Waiting for a free research slot: position ${event.position} in the queue`;
    } else if (kind === "init") {
      this.queueLine.hidden = false;
      this.queueLine.textContent = "Research started";
    } else if (kind === "round_start") {
      if (this.round) this.round.open = false;
      this.round = el("details", "round");
      this.round.open = true;
      this.roundLabel = `Round ${event.round}`;
      this.roundSummary = el("summary", "", this.roundLabel);
      this.round.append(this.roundSummary);
      this.reasoning = el("div", "reasoning");
      this.round.append(this.reasoning);
      this.progress.append(this.round);
      this.tool = null;
    } else if (kind === "thinking") {
      this.ensureRound().reasoning.textContent = event.content;
    } else if (kind === "tool_call_start") {
      this.tool = el("details", "tool");
      this.tool.append(el("summary", "", `→ ${event.content}`));
      this.ensureRound().round.append(this.tool);
      this.roundSummary.textContent = `${this.roundLabel} · ${clip(event.content, 90)}`;
    } else if (kind === "tool_result" || kind === "tool_error") {
      const tool = this.tool || this.ensureRound().round.appendChild(el("details", "tool"));
      const summary = tool.querySelector("summary") || tool.appendChild(el("summary"));
      if (kind === "tool_error") {
        tool.classList.add("failed");
        summary.textContent += ` ✗ ${event.content}`;
        this.roundSummary.textContent += " · failed";
      } else {
        summary.textContent += ` ← ${event.content}`;
        this.roundSummary.textContent += ` · ${event.content}`;
        tool.append(el("pre", "", event.result || event.content));
      }
      this.tool = null;
    } else if (kind === "answer_generation") {
      if (this.round) this.roundSummary.textContent = `${this.roundLabel} · the answer`;
      this.showAnswer(event.content ? `${capitalise(event.content)}…` : "Writing the answer…", null);
    } else if (kind === "final_answer_chunk") {
      this.showAnswer(event.content, null);
    } else if (kind === "final_answer") {
      this.citations = event.answer_data.citations || [];
      this.showAnswer(event.answer_data.answer, this.citations);
    } else if (TERMINAL.has(kind)) {
      this.finish(kind, event.content);
    }
  }

  ensureRound() {
    if (!this.round) this.apply({ type: "round_start", round: 1 });
    return this;
  }

  showAnswer(markdown, citations) {
    this.answer.hidden = false;
    const numbers = new Set((citations || []).map((c) => Number(c.id)));
    this.answer.innerHTML = `<h3>Answer</h3>${Markdown.render(markdown, numbers)}`;
    if (citations && citations.length) this.answer.append(this.references(citations));
  }

  references(citations) {
    const box = el("div", "refs");
    box.append(el("h4", "", "Sources"));
    const list = el("ol");
    for (const citation of citations) {
      const item = el("li");
      item.value = Number(citation.id);
      item.append(el("span", "", citation.title || citation.source_id));
      if (citation.url) {
        item.append(" — ");
        const link = el("a", "", sourceLabel(citation.url));
        link.href = citation.url;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        item.append(link);
      }
      const read = el("button", "", "Read passage");
      read.type = "button";
      read.dataset.cite = citation.id;
      read.setAttribute("aria-label", `Read the passage of source ${citation.id}`);
      item.append(read);
      list.append(item);
    }
    box.append(list);
    return box;
  }

  finish(kind, content) {
    this.done = true;
    this.queueLine.hidden = true;
    for (const round of this.progress.querySelectorAll("details.round")) round.open = false;
    const [label, tone] = OUTCOME[kind] || [kind, "bad"];
    this.outcome.className = `outcome ${tone}`;
    this.outcome.textContent = kind === "completed" ? label : `${label}: ${content}`;
  }

  notice(text) {
    this.outcome.className = "outcome";
    this.outcome.textContent = text;
  }
}

function clip(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function openSource(citations, number) {
  const citation = citations.find((c) => Number(c.id) === number);
  if (!citation) return;
  $("source-number").textContent = `Source [${citation.id}] · ${citation.source_id}`;
  $("source-title").textContent = citation.title || citation.source_id;
  const link = $("source-link");
  link.hidden = !citation.url;
  link.href = citation.url || "#";
  link.textContent = citation.url ? `Open on ${sourceLabel(citation.url)}` : "";
  $("source-text").textContent = citation.full_content || citation.preview || "";
  $("source-dialog").showModal();
}

// ---- following a session, reconnecting after a dropped connection ---------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function follow(view, firstResponse, generation) {
  let response = firstResponse;
  let delay = 500;
  while (!view.done && generation === state.generation) {
    try {
      if (!response) {
        const headers = view.lastSeq ? { "Last-Event-ID": String(view.lastSeq) } : {};
        response = await api(`/sessions/${view.sessionId}/events`, {
          headers, signal: state.running && state.running.controller.signal,
        });
        if (!response.ok) {
          view.notice(`Could not follow the research: ${await errorText(response)}`);
          return;
        }
      }
      await readEvents(response, ({ id, data }) => {
        if (generation !== state.generation) return;
        if (id !== null && id <= view.lastSeq) return; // already shown
        if (id !== null) view.lastSeq = id;
        view.apply(data);
        onEventShown(view, data);
      }, state.running && state.running.controller.signal);
      delay = 500;
    } catch (error) {
      if (error instanceof AuthNeeded || error.name === "AbortError") return;
    }
    response = null;
    if (!view.done && generation === state.generation) {
      view.notice("Connection lost: reconnecting…");
      await sleep(delay);
      delay = Math.min(delay * 2, 8000);
      if (!view.done) view.notice("");
    }
  }
  if (state.running && state.running.view === view) setRunning(null);
}

function onEventShown(view, data) {
  if (data.type === "session_start" && !state.conversationId) {
    setConversation(data.session_id);
    refreshHistory();
  }
  if (TERMINAL.has(data.type)) refreshHistory();
  if (data.type === "queued" || data.type === "init" || TERMINAL.has(data.type)) refreshStatus();
  const thread = $("thread");
  const nearBottom = thread.scrollHeight - thread.scrollTop - thread.clientHeight < 160;
  if (nearBottom) thread.scrollTop = thread.scrollHeight;
}

function setRunning(running) {
  if (state.running && running === null) state.running.controller.abort();
  state.running = running;
  $("cancel").hidden = !running;
  $("ask").disabled = Boolean(running);
  $("thread").setAttribute("aria-busy", running ? "true" : "false");
}

function setConversation(id) {
  state.conversationId = id;
  const hash = id ? `#c=${encodeURIComponent(id)}` : " ";
  history.replaceState(null, "", hash === " " ? location.pathname : hash);
  for (const button of document.querySelectorAll("#conversation-list button")) {
    button.setAttribute("aria-current", String(button.dataset.id === id));
  }
}

// ---- actions ---------------------------------------------------------------------------

async function ask(question) {
  const body = { question };
  if (state.conversationId) body.session_id = state.conversationId;
  const view = new TurnView(question);
  $("welcome").hidden = true;
  $("thread").append(view.root);
  const controller = new AbortController();
  let response;
  try {
    response = await api("/chat/stream", { method: "POST", json: body, signal: controller.signal });
  } catch (error) {
    if (!(error instanceof AuthNeeded)) view.notice("Could not reach the server.");
    return;
  }
  if (!response.ok) {
    const wait = response.headers.get("Retry-After");
    const text = await errorText(response);
    view.done = true;
    view.outcome.className = "outcome bad";
    view.outcome.textContent = `Not started: ${wait ? `${text} (try again in ${wait} s)` : text}`;
    return;
  }
  $("question").value = "";
  setRunning({ view, controller });
  await follow(view, response, state.generation);
}

async function cancel() {
  const running = state.running;
  if (!running || !running.view.sessionId) return;
  $("cancel").disabled = true;
  try {
    const response = await api(`/sessions/${running.view.sessionId}`, { method: "DELETE" });
    if (!response.ok && response.status !== 409) running.view.notice(await errorText(response));
  } finally {
    $("cancel").disabled = false;
  }
}

function clearThread() {
  state.generation += 1;
  setRunning(null);
  for (const turn of document.querySelectorAll("#thread .turn")) turn.remove();
  $("welcome").hidden = false;
}

async function openConversation(id) {
  clearThread();
  const generation = state.generation;
  const response = await api(`/conversations/${encodeURIComponent(id)}`);
  if (!response.ok) {
    setConversation(null);
    return;
  }
  const conversation = await response.json();
  if (generation !== state.generation) return;
  setConversation(conversation.conversation_id);
  $("welcome").hidden = true;
  for (const turn of conversation.turns) {
    const view = new TurnView(turn.question);
    view.sessionId = turn.session_id;
    $("thread").append(view.root);
    const unfinished = turn.status === "queued" || turn.status === "processing";
    if (unfinished) {
      setRunning({ view, controller: new AbortController() });
      follow(view, null, generation);
    } else {
      const events = await api(`/sessions/${turn.session_id}/events`);
      await readEvents(events, ({ id, data }) => {
        if (id !== null) view.lastSeq = id;
        view.apply(data);
      });
    }
  }
  $("thread").scrollTop = $("thread").scrollHeight;
}

function ago(iso) {
  const minutes = Math.round((Date.now() - new Date(iso).getTime()) / 60000);
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min ago`;
  if (minutes < 1440) return `${Math.round(minutes / 60)} h ago`;
  return new Date(iso).toLocaleDateString();
}

async function refreshHistory() {
  let response;
  try {
    response = await api("/conversations?limit=50");
  } catch {
    return;
  }
  if (!response.ok) return;
  const { conversations } = await response.json();
  const list = $("conversation-list");
  list.replaceChildren();
  for (const conversation of conversations) {
    const item = el("li");
    const button = el("button");
    button.type = "button";
    button.dataset.id = conversation.conversation_id;
    button.setAttribute("aria-current", String(conversation.conversation_id === state.conversationId));
    button.append(el("span", "title", conversation.title));
    const count = conversation.turns === 1 ? "1 question" : `${conversation.turns} questions`;
    button.append(el("span", "meta", `${count} · ${ago(conversation.updated_at)} · ${conversation.status.replace("_", " ")}`));
    button.addEventListener("click", () => {
      $("history").classList.remove("open");
      $("toggle-history").setAttribute("aria-expanded", "false");
      openConversation(conversation.conversation_id);
    });
    item.append(button);
    list.append(item);
  }
  $("history-empty").hidden = conversations.length > 0;
}

async function refreshStatus() {
  const strip = $("status-strip");
  try {
    const health = await (await fetch("/health")).json();
    const backends = health.llm.backends || [];
    const healthy = backends.filter((b) => b.healthy !== false).length;
    const model = health.mode === "offline"
      ? "offline evidence mode"
      : `model: ${healthy}/${backends.length} backend${backends.length === 1 ? "" : "s"} up`;
    const index = health.index.building ? "index building" : `${health.index.documents.toLocaleString()} documents`;
    strip.innerHTML = "";
    strip.append(el("span", `dot${healthy || health.mode === "offline" ? "" : " bad"}`));
    strip.append(`${health.active_sessions}/${health.max_concurrent} slots busy · ${health.queued_sessions} queued · ${model} · ${index}`);
  } catch {
    strip.innerHTML = "";
    strip.append(el("span", "dot bad"), "Server unreachable");
  }
}

function showKeyForm(message) {
  $("key-form-area").hidden = false;
  $("key-error").textContent = message;
  $("api-key").focus();
}

async function start() {
  refreshStatus();
  setInterval(() => { if (!document.hidden) refreshStatus(); }, 5000);
  try {
    await refreshHistory();
    const match = /^#c=(.+)$/.exec(location.hash);
    if (match) await openConversation(decodeURIComponent(match[1]));
  } catch (error) {
    if (!(error instanceof AuthNeeded)) throw error;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (question && !state.running) ask(question);
  });
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("cancel").addEventListener("click", cancel);
  $("new-conversation").addEventListener("click", () => {
    clearThread();
    setConversation(null);
    $("question").focus();
  });
  $("toggle-history").addEventListener("click", () => {
    const open = $("history").classList.toggle("open");
    $("toggle-history").setAttribute("aria-expanded", String(open));
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    localStorage.setItem(KEY_STORE, state.key);
    $("key-form-area").hidden = true;
    start();
  });
  start();
});
