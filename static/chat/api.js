// Small REST helpers: reads, paginated lists, and writes with the CSRF token.

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

// The page's CSRF token: Django's session-authenticated API refuses writes without it.
function csrfToken() {
  const field = document.querySelector('input[name="csrfmiddlewaretoken"]');
  if (field?.value) return field.value;
  const cookie = document.cookie.split('; ').find((pair) => pair.startsWith('csrftoken='));
  return cookie ? decodeURIComponent(cookie.slice('csrftoken='.length)) : '';
}

// POST/DELETE a JSON body with the CSRF token; resolves to the reply's JSON (null for
// 204). A refusal throws HttpError with the first field error or the detail as text.
export async function sendJSON(method, url, body = undefined) {
  const headers = { Accept: 'application/json', 'X-CSRFToken': csrfToken() };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(url, {
    method,
    credentials: 'same-origin',
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = res.status === 204 ? null : await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    throw new HttpError(res.status, errorText(data), Number(res.headers.get('Retry-After')) || null);
  }
  return data;
}

// `{"detail"}` or `{"field": ["message", ...]}` as one line of text.
function errorText(data) {
  if (!data || typeof data !== 'object') return '';
  if (typeof data.detail === 'string') return data.detail;
  for (const value of Object.values(data)) {
    if (Array.isArray(value) && typeof value[0] === 'string') return value[0];
  }
  return '';
}

// Every page of a paginated list endpoint ({results, next}), concatenated.
export async function getAllPages(url) {
  const results = [];
  for (let next = url, pages = 0; next && pages < 100; pages += 1) {
    const data = await getJSON(next);
    if (Array.isArray(data?.results)) results.push(...data.results);
    next = typeof data?.next === 'string' ? sameOriginPath(data.next) : null;
  }
  return results;
}

// DRF's `next` is an absolute URL built from the request's Host: keep its path only.
function sameOriginPath(link) {
  const url = new URL(link, location.origin);
  return url.pathname + url.search;
}
