// The playground: plain JavaScript against the gateway's public API, as any client would call it.
// Talk: microphone -> /v1/realtime (24 kHz pcm16 frames) -> transcripts and audio played as it comes.
// Transcribe: /v1/audio/transcriptions. Speak: /v1/audio/speech, played while it streams.
// Exposed for tests and the curious: window.voiceproxyPlayground (samples scheduled, state).
"use strict";

const RATE = 24000;
const $ = (selector) => document.querySelector(selector);
const page = (window.voiceproxyPlayground = {
  scheduledSamples: 0, // Talk: samples handed to the audio output
  speakSamples: 0, // Speak: samples handed to the audio output
  interruptions: 0, // Talk: times playback was cut by the user's speech
  truncations: [], // Talk: {item_id, audio_end_ms} sent
  events: [], // Talk: the server event types, in order
});

// --- access: an API key in this tab's session storage, or client secrets for a staff login ----

const access = { key: sessionStorage.getItem("voiceproxy.key") || "", secret: null, secretExpires: 0 };

async function token() {
  if (access.key) return access.key;
  if (window.VOICEPROXY.staff) {
    if (!access.secret || Date.now() / 1000 > access.secretExpires - 30) {
      const response = await fetch("/playground/secret", {
        method: "POST",
        headers: { "X-CSRFToken": window.VOICEPROXY.csrf },
        credentials: "same-origin",
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : "Could not get a client secret.");
      access.secret = body.value;
      access.secretExpires = body.expires_at;
    }
    return access.secret;
  }
  throw new Error("Enter an API key first.");
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + (await token()) }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let message = "HTTP " + response.status;
    try {
      const body = await response.json();
      if (body.error && body.error.message) message = body.error.message;
    } catch (ignored) {
      /* not JSON */
    }
    const error = new Error(explain(response.status, message));
    error.status = response.status;
    throw error;
  }
  return response;
}

function explain(status, message) {
  if (status === 401) return "The API key was refused: " + message;
  if (status === 429) return "Too many requests: " + message;
  if (status === 503) return "The server is busy: " + message;
  return message;
}

function say(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

function option(select, value, label) {
  const item = document.createElement("option");
  item.value = value;
  item.textContent = label || value;
  select.appendChild(item);
}

async function loadModels() {
  const models = (await (await api("/v1/models")).json()).data;
  for (const id of ["#talk-model", "#stt-model", "#tts-model"]) $(id).innerHTML = "";
  for (const model of models) {
    if (model.alias_of) continue;
    if (model.task === "stt") option($("#stt-model"), model.id);
    else if (model.task === "tts") option($("#tts-model"), model.id);
    else option($("#talk-model"), model.id);
  }
  if (!$("#talk-model").options.length) option($("#talk-model"), "default", "(the default upstream)");
  await loadVoices($("#tts-model").value, $("#tts-voice"));
  // Talk speaks with any model's voice: the value names both.
  const all = await (await api("/v1/audio/voices")).json();
  $("#talk-voice").innerHTML = "";
  for (const voice of all.data) option($("#talk-voice"), voice.model + "|" + voice.name, voice.name + " (" + voice.model + ")");
}

async function loadVoices(model, select) {
  const query = model ? "?model=" + encodeURIComponent(model) : "";
  const body = await (await api("/v1/audio/voices" + query)).json();
  select.innerHTML = "";
  for (const voice of body.data) option(select, voice.name);
}

async function connect() {
  const status = $("#auth-status");
  try {
    await loadModels();
    say(status, access.key ? "Key accepted." : "Using short-lived client secrets from your admin login.");
  } catch (error) {
    say(status, error.message, true);
  }
}

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  access.key = $("#api-key").value.trim();
  sessionStorage.setItem("voiceproxy.key", access.key);
  $("#api-key").value = "";
  connect();
});
if ($("#use-login")) {
  $("#use-login").addEventListener("click", () => {
    access.key = "";
    sessionStorage.removeItem("voiceproxy.key");
    connect();
  });
}

$("#tts-model").addEventListener("change", () => loadVoices($("#tts-model").value, $("#tts-voice")));

// --- tabs ---------------------------------------------------------------------------------

for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll('[role="tab"]')) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      $("#" + other.getAttribute("aria-controls")).hidden = !selected;
    }
  });
}

// --- audio helpers ------------------------------------------------------------------------

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function pcm16ToFloat(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength - (bytes.byteLength % 2));
  const out = new Float32Array(view.byteLength / 2);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true) / 32768;
  return out;
}

function floatToPcm16(samples) {
  const out = new Uint8Array(samples.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(i * 2, s < 0 ? s * 32768 : s * 32767, true);
  }
  return out;
}

// Gap-free playback: each chunk starts where the last one ends.
class Player {
  constructor(context) {
    this.context = context;
    this.next = 0;
    this.sources = [];
    this.started = null; // when the current item's audio began playing
  }
  play(samples) {
    const buffer = this.context.createBuffer(1, samples.length, RATE);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const at = Math.max(this.context.currentTime + 0.03, this.next);
    if (this.started === null) this.started = at;
    source.start(at);
    this.next = at + buffer.duration;
    this.sources.push(source);
    source.onended = () => (this.sources = this.sources.filter((s) => s !== source));
    return samples.length;
  }
  playedMs() {
    return this.started === null ? 0 : Math.max(0, (this.context.currentTime - this.started) * 1000);
  }
  busy() {
    return this.sources.length > 0;
  }
  stop() {
    for (const source of this.sources) source.stop();
    this.sources = [];
    this.next = 0;
    this.started = null;
  }
}

// --- Talk ----------------------------------------------------------------------------------

const talk = { socket: null, context: null, stream: null, player: null, turn: null, reply: null, turns: 0 };

function logLine(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  $("#talk-log").appendChild(item);
  return item;
}

function latencyRow(turn) {
  const row = document.createElement("tr");
  const cell = (value) => {
    const td = document.createElement("td");
    td.textContent = value;
    row.appendChild(td);
    return td;
  };
  cell(String(turn.number));
  turn.cells = [cell("…"), cell("…"), cell("…")];
  $("#talk-latency").appendChild(row);
}

function mark(turn, index) {
  if (!turn || !turn.stopped || turn.cells[index].textContent !== "…") return;
  turn.cells[index].textContent = Math.round(performance.now() - turn.stopped) + " ms";
}

function interrupt() {
  // The user talks over the answer: playback stops now, and the answer is cut to what was heard.
  const reply = talk.reply;
  if (!talk.player || !talk.player.busy()) return;
  const heard = Math.floor(talk.player.playedMs());
  talk.player.stop();
  page.interruptions += 1;
  if (reply && reply.line) reply.line.classList.add("interrupted");
  if (reply && reply.itemId) {
    const audioEnd = Math.min(heard, Math.floor(reply.audioMs));
    talk.socket.send(JSON.stringify({ type: "conversation.item.truncate", item_id: reply.itemId, content_index: 0, audio_end_ms: audioEnd }));
    page.truncations.push({ item_id: reply.itemId, audio_end_ms: audioEnd });
  }
}

function onEvent(event) {
  page.events.push(event.type);
  switch (event.type) {
    case "session.created":
      say($("#talk-state"), "Listening… speak now.");
      break;
    case "input_audio_buffer.speech_started":
      interrupt();
      talk.turn = { number: ++talk.turns, stopped: null };
      say($("#talk-state"), "Hearing you…");
      break;
    case "input_audio_buffer.speech_stopped":
      if (talk.turn) {
        talk.turn.stopped = performance.now();
        latencyRow(talk.turn);
      }
      say($("#talk-state"), "Thinking…");
      break;
    case "conversation.item.input_audio_transcription.completed":
      logLine("user", event.transcript || "(nothing heard)");
      mark(talk.turn, 0);
      break;
    case "response.created":
      talk.reply = { line: null, itemId: null, audioMs: 0, turn: talk.turn };
      if (talk.player) talk.player.started = null;
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      if (!talk.reply) break;
      if (!talk.reply.line) talk.reply.line = logLine("assistant", "");
      talk.reply.itemId = event.item_id;
      talk.reply.line.textContent += event.delta;
      mark(talk.reply.turn, 1);
      break;
    case "response.output_audio.delta": {
      if (!talk.reply) break;
      const samples = pcm16ToFloat(base64ToBytes(event.delta));
      talk.reply.itemId = event.item_id;
      talk.reply.audioMs += (samples.length / RATE) * 1000;
      page.scheduledSamples += talk.player.play(samples);
      mark(talk.reply.turn, 2);
      say($("#talk-state"), "Speaking… (talk to interrupt)");
      break;
    }
    case "response.done":
      if (event.response.status === "failed") say($("#talk-state"), "The answer failed: " + event.response.status_details.error.message, true);
      else say($("#talk-state"), "Listening… speak now.");
      break;
    case "error":
      say($("#talk-state"), event.error.message, true);
      break;
  }
}

async function startTalk() {
  const state = $("#talk-state");
  try {
    const secret = await token();
    await api("/v1/models"); // a clear message for a wrong key (a refused WebSocket says nothing)
    talk.context = new AudioContext({ sampleRate: RATE });
    await talk.context.resume();
    talk.player = new Player(talk.context);
    talk.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
  } catch (error) {
    const denied = error.name === "NotAllowedError" || error.name === "SecurityError";
    say(state, denied ? "The microphone is not allowed: allow it for this site and try again." : error.message, true);
    return;
  }
  const model = $("#talk-model").value;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = scheme + "//" + location.host + "/v1/realtime?model=" + encodeURIComponent(model);
  const socket = (talk.socket = new WebSocket(url, ["realtime", "openai-insecure-api-key." + (await token())]));
  say(state, "Connecting…");
  socket.onopen = () => {
    socket.send(
      JSON.stringify({
        type: "session.update",
        session: {
          type: "realtime",
          instructions: $("#talk-instructions").value,
          speech_model: $("#talk-voice").value.split("|")[0],
          audio: { output: { voice: $("#talk-voice").value.split("|")[1] } },
        },
      }),
    );
    const source = talk.context.createMediaStreamSource(talk.stream);
    const processor = talk.context.createScriptProcessor(2048, 1, 1);
    processor.onaudioprocess = (event) => {
      if (socket.readyState !== WebSocket.OPEN) return;
      const pcm = floatToPcm16(event.inputBuffer.getChannelData(0));
      socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: bytesToBase64(pcm) }));
    };
    source.connect(processor);
    processor.connect(talk.context.destination); // silent: the processor writes nothing to its output
    talk.processor = processor;
  };
  socket.onmessage = (message) => onEvent(JSON.parse(message.data));
  socket.onclose = (close) => {
    if (close.code !== 1000 && close.code !== 1005) say(state, "The connection closed (" + close.code + "). Is the server busy, or the key refused?", true);
    stopTalk(false);
  };
  $("#talk-start").disabled = true;
  $("#talk-stop").disabled = false;
}

function stopTalk(closeSocket = true) {
  if (talk.processor) talk.processor.disconnect();
  if (talk.stream) talk.stream.getTracks().forEach((track) => track.stop());
  if (talk.player) talk.player.stop();
  if (closeSocket && talk.socket) talk.socket.close(1000);
  talk.processor = talk.stream = null;
  $("#talk-start").disabled = false;
  $("#talk-stop").disabled = true;
  if (closeSocket) say($("#talk-state"), "Stopped.");
}

$("#talk-start").addEventListener("click", startTalk);
$("#talk-stop").addEventListener("click", () => stopTalk(true));

// --- Transcribe ----------------------------------------------------------------------------

let recorded = null;

$("#stt-record").addEventListener("click", async () => {
  const button = $("#stt-record");
  if (button.recorder) {
    button.recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const parts = [];
    recorder.ondataavailable = (event) => parts.push(event.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((track) => track.stop());
      recorded = new Blob(parts, { type: recorder.mimeType });
      button.recorder = null;
      button.textContent = "Record";
      say($("#stt-status"), "Recorded " + Math.round(recorded.size / 1024) + " KiB: press Transcribe.");
    };
    recorder.start();
    button.recorder = recorder;
    button.textContent = "Stop recording";
  } catch (error) {
    say($("#stt-status"), "The microphone is not allowed: " + error.message, true);
  }
});

function renderWords(words, duration) {
  const timeline = $("#stt-timeline");
  timeline.innerHTML = "";
  for (const word of words) {
    const mark = document.createElement("span");
    mark.className = "word";
    mark.textContent = word.word;
    mark.title = word.start.toFixed(2) + "–" + word.end.toFixed(2) + " s";
    mark.style.left = (100 * word.start) / Math.max(duration, 0.001) + "%";
    timeline.appendChild(mark);
  }
}

$("#stt-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("#stt-status");
  const output = $("#stt-output");
  const file = $("#stt-file").files[0] || (recorded && new File([recorded], "recording.webm", { type: recorded.type }));
  if (!file) return say(status, "Choose a file or record first.", true);
  const words = $("#stt-words").checked;
  const stream = $("#stt-stream").checked;
  const form = new FormData();
  form.append("file", file);
  form.append("model", $("#stt-model").value);
  form.append("response_format", words ? "verbose_json" : $("#stt-format").value);
  if ($("#stt-language").value.trim()) form.append("language", $("#stt-language").value.trim());
  if (words) form.append("timestamp_granularities[]", "word");
  if (stream) form.append("stream", "true");
  output.textContent = "";
  $("#stt-timeline").innerHTML = "";
  say(status, "Transcribing…");
  try {
    const response = await api("/v1/audio/transcriptions", { method: "POST", body: form });
    if (stream) {
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        const lines = pending.split("\n");
        pending = lines.pop();
        for (const line of lines) {
          if (!line.startsWith("data:")) continue;
          const data = JSON.parse(line.slice(5));
          if (data.type === "transcript.text.delta") output.textContent += data.delta;
          if (data.type === "transcript.text.done") output.textContent = data.text;
        }
      }
    } else if ((response.headers.get("content-type") || "").includes("json")) {
      const body = await response.json();
      output.textContent = body.text;
      if (body.words) renderWords(body.words, body.duration);
    } else {
      output.textContent = await response.text();
    }
    say(status, "Done.");
  } catch (error) {
    say(status, error.message, true);
  }
});

// --- Speak ---------------------------------------------------------------------------------

$("#tts-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("#tts-status");
  const body = {
    model: $("#tts-model").value,
    voice: $("#tts-voice").value,
    input: $("#tts-text").value,
    speed: Number($("#tts-speed").value),
  };
  say(status, "Speaking…");
  $("#tts-download").hidden = true;
  try {
    const context = new AudioContext({ sampleRate: RATE });
    await context.resume();
    const player = new Player(context);
    const response = await api("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign({ response_format: "pcm" }, body)),
    });
    const reader = response.body.getReader();
    let carry = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const joined = new Uint8Array(carry.length + value.length);
      joined.set(carry);
      joined.set(value, carry.length);
      const whole = joined.length - (joined.length % 2);
      carry = joined.slice(whole);
      if (whole) page.speakSamples += player.play(pcm16ToFloat(joined.subarray(0, whole)));
    }
    say(status, "Played " + (page.speakSamples / RATE).toFixed(1) + " s of audio.");
    const format = $("#tts-format").value;
    const file = await api("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign({ response_format: format }, body)),
    });
    const link = $("#tts-download");
    link.href = URL.createObjectURL(await file.blob());
    link.download = "speech." + format;
    link.hidden = false;
  } catch (error) {
    say(status, error.message, true);
  }
});

if (access.key || window.VOICEPROXY.staff) connect();
