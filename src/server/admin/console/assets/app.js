// keyguard console: passkey ceremonies, live approvals, expiry countdowns.
// Served as a separate file (the CSP allows no inline script). Everything else works without it.
'use strict';

function b64uToBuf(s) {
  const pad = '='.repeat((4 - (s.length % 4)) % 4);
  const bin = atob((s + pad).replace(/-/g, '+').replace(/_/g, '/'));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out.buffer;
}

function bufToB64u(buf) {
  const bytes = new Uint8Array(buf);
  let bin = '';
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

async function post(path, body) {
  const r = await fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    credentials: 'same-origin',
  });
  const v = await r.json();
  if (!r.ok) throw new Error((v.rule ? v.rule + ': ' : '') + (v.error || r.status));
  return v;
}

function say(text, ok) {
  const el = document.getElementById('status');
  if (el) {
    el.textContent = text;
    el.className = ok ? 'ok' : 'err';
  }
}

async function enrol() {
  try {
    const user = document.getElementById('enrol-user').value;
    const totp = document.getElementById('enrol-totp').value;
    const opts = await post('/console/passkey/enrol/start', { user, totp });
    const pk = opts.publicKey;
    pk.challenge = b64uToBuf(pk.challenge);
    pk.user.id = b64uToBuf(pk.user.id);
    (pk.excludeCredentials || []).forEach((c) => { c.id = b64uToBuf(c.id); });
    const cred = await navigator.credentials.create({ publicKey: pk });
    await post('/console/passkey/enrol/finish', {
      id: cred.id,
      rawId: bufToB64u(cred.rawId),
      type: cred.type,
      extensions: {},
      response: {
        attestationObject: bufToB64u(cred.response.attestationObject),
        clientDataJSON: bufToB64u(cred.response.clientDataJSON),
      },
    });
    say('Passkey enrolled. Sign in with it now.', true);
  } catch (e) {
    say('Enrolment failed: ' + e.message, false);
  }
}

async function signin() {
  try {
    const user = document.getElementById('signin-user').value;
    const opts = await post('/console/passkey/signin/start', { user });
    const pk = opts.publicKey;
    pk.challenge = b64uToBuf(pk.challenge);
    (pk.allowCredentials || []).forEach((c) => { c.id = b64uToBuf(c.id); });
    const cred = await navigator.credentials.get({ publicKey: pk });
    const done = await post('/console/passkey/signin/finish', {
      id: cred.id,
      rawId: bufToB64u(cred.rawId),
      type: cred.type,
      extensions: {},
      response: {
        authenticatorData: bufToB64u(cred.response.authenticatorData),
        clientDataJSON: bufToB64u(cred.response.clientDataJSON),
        signature: bufToB64u(cred.response.signature),
        userHandle: cred.response.userHandle ? bufToB64u(cred.response.userHandle) : null,
      },
    });
    window.location.assign(done.next);
  } catch (e) {
    say('Sign-in failed: ' + e.message, false);
  }
}

function countdowns() {
  const now = Date.now();
  document.querySelectorAll('[data-expires]').forEach((el) => {
    const left = Math.max(0, Math.floor((Number(el.dataset.expires) - now) / 1000));
    el.textContent = left === 0 ? 'expired' : Math.floor(left / 60) + 'm ' + (left % 60) + 's';
  });
}

document.addEventListener('DOMContentLoaded', () => {
  const e = document.getElementById('enrol');
  if (e) e.addEventListener('click', enrol);
  const s = document.getElementById('signin');
  if (s) s.addEventListener('click', signin);
  if (document.querySelector('[data-expires]')) {
    countdowns();
    setInterval(countdowns, 1000);
  }
  const live = document.getElementById('live');
  if (live && window.EventSource) {
    const since = live.dataset.version;
    const es = new EventSource('/console/events?version=' + encodeURIComponent(since));
    es.addEventListener('changed', () => {
      es.close();
      // Do not throw away a TOTP code being typed.
      const typing = Array.from(document.querySelectorAll('input[name=totp]')).some((i) => i.value);
      if (typing) {
        live.textContent = 'New activity — reload to see it.';
      } else {
        window.location.reload();
      }
    });
  }
});
