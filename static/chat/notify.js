// Browser notifications for a DM or a mention while the tab is hidden. Permission is
// asked only from the reader's click on the "Enable notifications" button.

export class Notifier {
  constructor({ button, onOpen }) {
    this.button = button;
    this.onOpen = onOpen; // (slug) => void, when a notification is clicked
    this.supported = typeof window.Notification === 'function';
    button.addEventListener('click', () => this.#ask());
    this.#update();
  }

  get enabled() {
    return this.supported && Notification.permission === 'granted';
  }

  // Notify about `msg` under `title`, if the tab is hidden.
  show(msg, title) {
    if (!this.enabled || document.visibilityState !== 'hidden') return null;
    const body = String(msg.body ?? '').slice(0, 200);
    try {
      const notification = new Notification(title, {
        body,
        tag: `voiceflow-${msg.room}`,
      });
      notification.onclick = () => {
        window.focus();
        this.onOpen?.(msg.room);
        notification.close();
      };
      return notification;
    } catch {
      return null; // e.g. a platform that wants a service worker for notifications
    }
  }

  async #ask() {
    if (!this.supported) return;
    try {
      await Notification.requestPermission();
    } catch {
      /* an old callback-only API, or a refusal: the button says how it ended */
    }
    this.#update();
  }

  #update() {
    const permission = this.supported ? Notification.permission : 'unsupported';
    this.button.hidden = permission !== 'default';
    this.button.dataset.permission = permission;
  }
}
