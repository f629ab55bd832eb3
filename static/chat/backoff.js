// Reconnect delays: exponential backoff with full jitter, plus the close-code policy
// from PROTOCOL.md ("Close codes and what a client does").

// What to do after a socket closes with `code`.
//   'reconnect' – ordinary backoff        'slow'  – a backing service is down
//   'throttled' – too many connections     'stop'  – auth/origin refused: do not retry
export function closePolicy(code) {
  switch (code) {
    case 4401: // not authenticated
    case 4403: // origin refused or kicked by a moderator
      return 'stop';
    case 4429: // too many connections (per IP or per user)
      return 'throttled';
    case 1013: // try again later: a backing service is down
      return 'slow';
    default: // 1006, 1009, 1011, 1012, 4408 and anything unknown
      return 'reconnect';
  }
}

export class Backoff {
  constructor({ base = 500, cap = 30_000, random = Math.random } = {}) {
    this.base = base;
    this.cap = cap;
    this.random = random;
    this.attempt = 0;
  }

  reset() {
    this.attempt = 0;
  }

  // Milliseconds to wait before the next attempt under `policy`.
  next(policy = 'reconnect') {
    const n = Math.min(this.attempt, 20); // keep 2 ** n finite
    this.attempt += 1;
    if (policy === 'throttled') {
      // The server is shedding connections: wait at least 30 s, spread over another 30 s.
      return 30_000 + this.random() * 30_000;
    }
    if (policy === 'slow') {
      // Service outage: at least 5 s, growing to a 60 s ceiling.
      const ceiling = Math.min(60_000, 10_000 * 2 ** n);
      return 5_000 + this.random() * (ceiling - 5_000);
    }
    // Full jitter: uniform in [0, min(cap, base * 2^n)).
    return this.random() * Math.min(this.cap, this.base * 2 ** n);
  }
}
