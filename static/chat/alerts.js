// Dismissible alerts inside the page's role="alert" region (#error-region).

const MAX_ALERTS = 4;

export class Alerts {
  constructor(region) {
    this.region = region;
  }

  // Show `text` (plain text, never HTML). A repeat of a visible alert is not duplicated.
  show(text, { kind = 'error', timeout = 0 } = {}) {
    for (const existing of this.region.querySelectorAll('.alert')) {
      if (existing.dataset.text === text) return existing;
    }
    const alert = document.createElement('div');
    alert.className = `alert alert--${kind}`;
    alert.dataset.text = text;

    const message = document.createElement('p');
    message.className = 'alert__text';
    message.textContent = text;

    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'alert__close';
    close.setAttribute('aria-label', 'Dismiss');
    close.textContent = '×';
    close.addEventListener('click', () => alert.remove());

    alert.append(message, close);
    this.region.append(alert);
    while (this.region.children.length > MAX_ALERTS) this.region.firstElementChild.remove();
    if (timeout > 0) setTimeout(() => alert.remove(), timeout);
    return alert;
  }

  clear(text) {
    for (const el of this.region.querySelectorAll('.alert')) {
      if (text === undefined || el.dataset.text === text) el.remove();
    }
  }
}
