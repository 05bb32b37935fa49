// The official Node SDK against the gateway, called as a Node developer would; tests/test_node_sdk.py
// runs it. The client is `new OpenAI()`, which reads OPENAI_BASE_URL and OPENAI_API_KEY itself.
//
//   node sdk_calls.mjs transcribe-stream SPEECH.wav     fs.createReadStream(path)
//   node sdk_calls.mjs transcribe-buffer SPEECH.wav     toFile(buffer, "a.wav")
//   node sdk_calls.mjs translate SPEECH.wav             model whisper-base, to English
//   node sdk_calls.mjs speech "TEXT" OUT.wav            tts-1, alloy, wav; the bytes written to OUT.wav
//   node sdk_calls.mjs chat SPEECH.wav OUT.wav          a spoken question, a spoken reply (wav)
//   node sdk_calls.mjs chat-stream SPEECH.wav OUT.pcm   the same, streamed as pcm16 deltas
//
// Prints one JSON line: what the call returned, plus the response's x-request-id (`request_id`).
// Any error is printed by Node on stderr with a non-zero exit code.

import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const client = new OpenAI({ maxRetries: 0 }); // retries would hide what the gateway answered

function spokenQuestion(path) {
  const data = fs.readFileSync(path).toString("base64");
  return [{ role: "user", content: [{ type: "input_audio", input_audio: { data, format: "wav" } }] }];
}

const calls = {
  async "transcribe-stream"(path) {
    const { data, response } = await client.audio.transcriptions
      .create({ model: "whisper-1", file: fs.createReadStream(path) })
      .withResponse();
    return { text: data.text, request_id: response.headers.get("x-request-id") };
  },

  async "transcribe-buffer"(path) {
    const file = await toFile(fs.readFileSync(path), "a.wav");
    const { data, response } = await client.audio.transcriptions
      .create({ model: "whisper-1", file })
      .withResponse();
    return { text: data.text, request_id: response.headers.get("x-request-id") };
  },

  async translate(path) {
    const { data, response } = await client.audio.translations
      .create({ model: "whisper-base", file: fs.createReadStream(path) })
      .withResponse();
    return { text: data.text, request_id: response.headers.get("x-request-id") };
  },

  async speech(input, out) {
    const response = await client.audio.speech.create({
      model: "tts-1",
      voice: "alloy",
      input,
      response_format: "wav",
    });
    const bytes = Buffer.from(await response.arrayBuffer());
    fs.writeFileSync(out, bytes);
    return {
      bytes: bytes.length,
      content_type: response.headers.get("content-type"),
      request_id: response.headers.get("x-request-id"),
    };
  },

  async chat(path, out) {
    const { data: completion, response } = await client.chat.completions
      .create({
        model: "fake-llm",
        modalities: ["text", "audio"],
        audio: { voice: "alloy", format: "wav" },
        messages: spokenQuestion(path),
      })
      .withResponse();
    const audio = completion.choices[0].message.audio;
    fs.writeFileSync(out, Buffer.from(audio.data, "base64"));
    return { transcript: audio.transcript, request_id: response.headers.get("x-request-id") };
  },

  async "chat-stream"(path, out) {
    const { data: stream, response } = await client.chat.completions
      .create({
        model: "fake-llm",
        modalities: ["text", "audio"],
        audio: { voice: "alloy", format: "pcm16" },
        messages: spokenQuestion(path),
        stream: true,
      })
      .withResponse();
    let transcript = "";
    const pcm = [];
    let chunks = 0;
    for await (const chunk of stream) {
      chunks += 1;
      for (const choice of chunk.choices) {
        const audio = choice.delta?.audio;
        if (audio?.transcript) transcript += audio.transcript;
        if (audio?.data) pcm.push(Buffer.from(audio.data, "base64"));
      }
    }
    const bytes = Buffer.concat(pcm);
    fs.writeFileSync(out, bytes);
    return {
      transcript,
      audio_bytes: bytes.length,
      chunks,
      request_id: response.headers.get("x-request-id"),
    };
  },
};

const [name, ...args] = process.argv.slice(2);
if (!(name in calls)) {
  console.error(`usage: node sdk_calls.mjs {${Object.keys(calls).join("|")}} ARGS...`);
  process.exit(2);
}
console.log(JSON.stringify(await calls[name](...args)));
