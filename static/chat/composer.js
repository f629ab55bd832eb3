// The message composer: auto-growing textarea, Enter to send (Shift+Enter for a new
// line), a code-point counter against the server's limit, and typing callbacks.

export function codePoints(text) {
  return [...text.trim()].length; // the server strips whitespace, then counts code points
}

export class Composer {
  constructor({ form, textarea, button, counter, max = 4000, onSend, onInput, onBlur }) {
    Object.assign(this, { form, textarea, button, counter, max, onSend, onInput, onBlur });

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    textarea.addEventListener('keydown', (event) => {
      // isComposing: Enter that confirms an IME candidate must not send.
      if (event.key !== 'Enter' || event.shiftKey || event.isComposing || event.keyCode === 229) return;
      if (event.altKey || event.ctrlKey || event.metaKey) return;
      event.preventDefault();
      this.submit();
    });
    textarea.addEventListener('input', () => {
      this.#update();
      this.onInput?.(textarea.value);
    });
    textarea.addEventListener('blur', () => this.onBlur?.());
    this.#update();
  }

  submit() {
    const length = codePoints(this.textarea.value);
    if (length === 0 || length > this.max) return;
    const body = this.textarea.value.trim();
    this.textarea.value = '';
    this.#update();
    this.onSend?.(body);
    this.textarea.focus();
  }

  setText(text) {
    this.textarea.value = text;
    this.#update();
    this.textarea.focus();
  }

  #update() {
    const length = codePoints(this.textarea.value);
    const over = length > this.max;
    this.counter.textContent = `${length} / ${this.max}`;
    this.counter.classList.toggle('char-counter--over', over);
    this.counter.classList.toggle('char-counter--near', !over && length > this.max * 0.9);
    if (over) this.textarea.setAttribute('aria-invalid', 'true');
    else this.textarea.removeAttribute('aria-invalid');
    // The counter is shown, and read with the composer, only near the limit.
    const hint = this.textarea.getAttribute('aria-describedby')?.split(' ').filter((id) => id !== this.counter.id) || [];
    if (over || length > this.max * 0.9) hint.push(this.counter.id);
    this.textarea.setAttribute('aria-describedby', hint.join(' '));
    this.button.disabled = length === 0 || over;
    // Grow with the content up to the CSS max-height, then scroll.
    const ta = this.textarea;
    ta.style.height = 'auto';
    ta.style.height = `${ta.scrollHeight + ta.offsetHeight - ta.clientHeight}px`;
  }
}
