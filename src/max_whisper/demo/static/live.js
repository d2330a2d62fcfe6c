// Live microphone mode: the browser's microphone streamed to /v1/realtime (OpenAI's realtime
// transcription events); words not yet final are grey, each finished utterance turns black.
(() => {
  const section = document.createElement('section');
  section.id = 'live';
  section.innerHTML = `
    <h2>Live <small>your microphone, transcribed while you speak (the first model, on MAX)</small></h2>
    <button id="live-toggle" type="button">Start microphone</button>
    <span id="live-status" role="status"></span>
    <div id="live-text" class="live-text" aria-live="polite"></div>`;
  (document.querySelector('main') || document.body).append(section);
  const toggle = section.querySelector('#live-toggle');
  const status = section.querySelector('#live-status');
  const text = section.querySelector('#live-text');
  let running = null;

  function line(itemId) {
    let p = text.querySelector(`p[data-item="${itemId}"]`);
    if (!p) {
      p = document.createElement('p');
      p.dataset.item = itemId;
      p.innerHTML = '<span class="final"></span> <span class="partial"></span>';
      text.append(p);
    }
    return p;
  }

  function show(event) {
    if (event.type === 'conversation.item.input_audio_transcription.delta') {
      const p = line(event.item_id);
      p.querySelector('.final').textContent += event.delta;
      p.querySelector('.partial').textContent = event.partial || '';
    } else if (event.type === 'conversation.item.input_audio_transcription.completed') {
      const p = line(event.item_id);
      p.textContent = event.transcript;
      p.classList.add('done');
    } else if (event.type === 'error') {
      status.textContent = `error: ${event.error.message}`;
    }
  }

  async function start() {
    const media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    const context = new AudioContext({ sampleRate: 16000 });
    await context.audioWorklet.addModule('/static/live-worklet.js');
    const capture = new AudioWorkletNode(context, 'pcm16-capture');
    const muted = context.createGain();
    muted.gain.value = 0;
    context.createMediaStreamSource(media).connect(capture).connect(muted).connect(context.destination);
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}/v1/realtime?intent=transcription`);
    socket.binaryType = 'arraybuffer';
    socket.onmessage = (message) => show(JSON.parse(message.data));
    socket.onclose = () => { if (running) stop('disconnected'); };
    capture.port.onmessage = (block) => { if (socket.readyState === WebSocket.OPEN) socket.send(block.data); };
    running = { media, context, socket };
    status.textContent = 'listening…';
    toggle.textContent = 'Stop microphone';
  }

  function stop(why) {
    const { media, context, socket } = running;
    running = null;
    media.getTracks().forEach((track) => track.stop());
    context.close();
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: 'input_audio_buffer.commit' }));
      setTimeout(() => socket.close(), 3000);  // the last utterance's final text may still come
    }
    status.textContent = why || 'stopped';
    toggle.textContent = 'Start microphone';
  }

  toggle.addEventListener('click', () => {
    if (running) return stop();
    start().catch((error) => { status.textContent = `error: ${error.message}`; });
  });
})();
