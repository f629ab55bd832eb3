// Small REST helpers for the message history endpoint.

export class HttpError extends Error {
  constructor(status, detail, retryAfter) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.retryAfter = retryAfter; // seconds, from a 429's Retry-After header
  }
}

export async function getJSON(url) {
  const res = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (!res.ok) {
    let detail = '';
    try {
      detail = (await res.json()).detail || '';
    } catch {
      /* not JSON */
    }
    throw new HttpError(res.status, String(detail), Number(res.headers.get('Retry-After')) || null);
  }
  return res.json();
}

// GET messagesUrl with ?before/?after/?limit; resolves to {results, has_more}.
export async function fetchMessages(messagesUrl, params = {}) {
  const url = new URL(messagesUrl, location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) url.searchParams.set(key, String(value));
  }
  const data = await getJSON(url.pathname + url.search);
  return {
    results: Array.isArray(data?.results) ? data.results : [],
    hasMore: Boolean(data?.has_more),
  };
}
