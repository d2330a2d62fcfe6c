// Microphone samples (the AudioContext runs at 16 kHz) to PCM16, posted every 100 ms.
class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Int16Array(1600);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (const x of channel) {
        this.block[this.filled++] = Math.max(-32768, Math.min(32767, Math.round(x * 32768)));
        if (this.filled === this.block.length) {
          this.port.postMessage(this.block.buffer, [this.block.buffer]);
          this.block = new Int16Array(1600);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor('pcm16-capture', Pcm16Capture);
