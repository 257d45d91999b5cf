// The new-request sound: a short chime made with Web Audio (no audio file to serve), which a
// provider can mute; the choice is remembered in localStorage (it is not a secret).
const KEY = "bookwire.muted";
let audio = null;

export function muted() {
  return localStorage.getItem(KEY) === "1";
}

export function setMuted(value) {
  localStorage.setItem(KEY, value ? "1" : "0");
}

/** Browsers start audio only after a gesture: make the context on the first click or key press. */
export function unlockOnGesture() {
  const unlock = () => {
    audio ||= new AudioContext();
    if (audio.state === "suspended") audio.resume();
  };
  window.addEventListener("pointerdown", unlock, { once: true });
  window.addEventListener("keydown", unlock, { once: true });
}

/** Play the chime unless muted; true when it played. */
export function chime() {
  if (muted()) return false;
  audio ||= new AudioContext();
  if (audio.state === "suspended") audio.resume();
  const now = audio.currentTime;
  const tone = audio.createOscillator();
  const volume = audio.createGain();
  tone.type = "sine";
  tone.frequency.setValueAtTime(880, now);
  tone.frequency.setValueAtTime(1320, now + 0.12);
  volume.gain.setValueAtTime(0.0001, now);
  volume.gain.exponentialRampToValueAtTime(0.2, now + 0.02);
  volume.gain.exponentialRampToValueAtTime(0.0001, now + 0.45);
  tone.connect(volume).connect(audio.destination);
  tone.start(now);
  tone.stop(now + 0.5);
  return true;
}
