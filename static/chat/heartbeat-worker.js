// Dedicated-worker timer: browsers throttle main-thread timers in hidden tabs to once a
// minute or less, which would miss the server's 60 s dead timeout. Worker timers are not.
let timer = null;

self.onmessage = (event) => {
  const { cmd, interval } = event.data || {};
  clearInterval(timer);
  timer = null;
  if (cmd === 'start' && interval > 0) {
    timer = setInterval(() => self.postMessage('tick'), interval);
  }
};
