// Chat: own profile and status, contacts with presence, direct conversations with their
// delivery state, rooms with members and history. Live through `chat.*` events.
import {
  html, useState, useEffect, useRef, useMemo, useApi, Section, ErrorNote, Id, post, act, q, navigate,
  useSubmit, fmtTime, ago, short, Presence, Empty, Loading, CopyButton,
} from '../lib.js';

const CHAT_EVENTS = ['chat.*'];
const PRESENCE_EVERY = 20000; // presence lapses silently after 60 s: look again now and then

function displayName(p) {
  if (!p) return '';
  return p.contact || p.nick || p.short_id || short(p.peer_id);
}

function Profile() {
  const prof = useApi('/v1/chat/profile', { events: ['chat.profile'] });
  const [form, setForm] = useState(null);
  // A node that never set a profile answers 404 `not_found`: offer to create one.
  const none = prof.error && prof.error.code === 'not_found';
  useEffect(() => {
    if (prof.data && !form) setForm({ nick: prof.data.nick, status: prof.data.status === 'offline' ? 'online' : prof.data.status, about: prof.data.about });
    else if (none && !form) setForm({ nick: '', status: 'online', about: '' });
  }, [prof.data, none]);
  const [busy, onSave] = useSubmit(async () => {
    const r = await act(() => post('/v1/chat/profile', form), 'Profile saved');
    if (r) prof.set(r);
  });
  const f = form || { nick: '', status: 'online', about: '' };
  const set = (k) => (e) => setForm({ ...f, [k]: e.target.value });
  return html`<${Section} title="My profile" testid="chat-profile">
    ${none ? html`<p class="muted" data-testid="profile-none">No profile yet: choose a nickname so others see who you are.</p>` : html`<${ErrorNote} error=${prof.error} />`}
    ${prof.data ? html`<p class="row"><${Presence} status=${prof.data.status} testid="profile-own-status" /> <${Id} value=${prof.data.peer_id} /> <${CopyButton} text=${prof.data.peer_id} what="Peer id" testid="copy-own-peer" /></p>` : null}
    <form class="stacked" onSubmit=${onSave} data-testid="profile-form">
      <label class="field"><span class="label">Nickname</span><input data-testid="profile-nick" value=${f.nick} maxlength="64" onInput=${set('nick')} /></label>
      <label class="field"><span class="label">Status</span>
        <select data-testid="profile-status" value=${f.status} onChange=${set('status')}>
          <option value="online">online</option><option value="away">away</option><option value="busy">busy</option>
        </select></label>
      <label class="field"><span class="label">About</span><input data-testid="profile-about" value=${f.about} maxlength="256" onInput=${set('about')} /></label>
      <div><button type="submit" data-testid="profile-save" disabled=${busy || !form || !f.nick.trim()}>Save</button></div>
    </form>
  </${Section}>`;
}

function Contacts({ contacts, unread, current, reload }) {
  const [peer, setPeer] = useState('');
  const [name, setName] = useState('');
  const [busy, onAdd] = useSubmit(async () => {
    const r = await act(() => post('/v1/chat/contacts', { peer: peer.trim(), name: name.trim() || undefined }), 'Contact added');
    if (r) {
      setPeer('');
      setName('');
      reload();
    }
  });
  const remove = async (p) => {
    if (await act(() => post('/v1/chat/contacts/remove', { peer: p.peer_id }), 'Contact removed')) reload();
  };
  const list = contacts.data || [];
  return html`<${Section} title="Contacts" testid="chat-contacts">
    <${ErrorNote} error=${contacts.error} />
    ${contacts.data === undefined ? html`<${Loading} />` : list.length === 0 ? html`<${Empty} testid="contacts-empty">No contacts yet: add one by peer id.</${Empty}>` : html`
    <ul class="list">${list.map((p) => html`<li key=${p.peer_id} class="with-actions" data-testid="contact" data-peer=${p.peer_id}>
      <a href=${`/chat/dm/${p.peer_id}`} data-testid="contact-link" aria-current=${current === p.peer_id ? 'true' : undefined}>
        <span><span class="name">${displayName(p)}</span>${p.nick && p.contact && p.nick !== p.contact ? html` <span class="muted">(${p.nick})</span>` : null}
          <div class="hint">${p.short_id} · ${p.status === 'online' ? 'online now' : `seen ${ago(p.last_seen)}`}</div></span>
        <span class="row">${unread[p.peer_id] ? html`<span class="unread" data-testid="contact-unread">${unread[p.peer_id]}</span>` : null}<${Presence} status=${p.status} /></span>
      </a>
      <button type="button" class="icon" data-testid="contact-remove" aria-label=${`Remove contact ${displayName(p)}`} title="Remove contact" onClick=${() => remove(p)}>×</button>
    </li>`)}</ul>`}
    <form class="stacked" onSubmit=${onAdd} data-testid="contact-add-form">
      <label class="field"><span class="label">Add a contact: peer id</span><input data-testid="contact-add-peer" value=${peer} required
        onInput=${(e) => setPeer(e.target.value)} placeholder="12D3KooW…" spellcheck="false" autocomplete="off" /></label>
      <div class="row"><label class="field grow"><span class="label">Name (optional)</span><input data-testid="contact-add-name" value=${name} onInput=${(e) => setName(e.target.value)} /></label>
        <button type="submit" data-testid="contact-add-button" disabled=${busy || !peer.trim()}>Add</button></div>
    </form>
  </${Section}>`;
}

function Rooms({ current }) {
  const rooms = useApi('/v1/chat/rooms', { events: CHAT_EVENTS, throttle: 500 });
  const [name, setName] = useState('');
  const [busy, onJoin] = useSubmit(async () => {
    const room = name.trim().replace(/^#/, '');
    const r = await act(() => post('/v1/chat/rooms/join', { room }), (o) => `Joined #${o.room}: ${o.members} members, ${o.history} posts of history`);
    if (r) {
      setName('');
      rooms.reload();
      navigate(`/chat/room/${encodeURIComponent(r.room)}`);
    }
  });
  const list = rooms.data || [];
  return html`<${Section} title="Rooms" testid="chat-rooms">
    <${ErrorNote} error=${rooms.error} />
    ${list.length === 0 ? html`<${Empty} testid="rooms-empty">Not in any room.</${Empty}>` : html`<ul class="list">
      ${list.map((r) => html`<li key=${r.room}><a href=${`/chat/room/${encodeURIComponent(r.room)}`} data-testid="room-link" data-room=${r.room}
        aria-current=${current === r.room ? 'true' : undefined}><span class="name">#${r.room}</span><span class="hint">${r.members} members · ${r.messages} posts</span></a></li>`)}
    </ul>`}
    <form class="inline" onSubmit=${onJoin} data-testid="room-join-form">
      <label class="field grow"><span class="label">Join a room</span><input data-testid="room-join-name" value=${name} onInput=${(e) => setName(e.target.value)}
        placeholder="rust" pattern="#?[a-z0-9._\\-]{1,64}" title="1–64 characters of a-z, 0-9, '-', '_' and '.'" required /></label>
      <button type="submit" data-testid="room-join-button" disabled=${busy}>${busy ? 'Joining…' : 'Join'}</button>
    </form>
  </${Section}>`;
}

function useStickToBottom(dep) {
  const ref = useRef(null);
  const stuck = useRef(true);
  useEffect(() => {
    const el = ref.current;
    if (el && stuck.current) el.scrollTop = el.scrollHeight;
  }, [dep]);
  const onScroll = (e) => {
    const el = e.currentTarget;
    stuck.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
  };
  return [ref, onScroll];
}

const STATE_LABEL = {
  queued: 'queued (not sent yet, retried)',
  stored: 'stored in the recipient\u2019s mailbox',
  delivered: 'delivered',
  unread: 'unread',
  read: 'read',
};

function Composer({ onSend, placeholder, testid = 'message' }) {
  const [text, setText] = useState('');
  const [busy, onSubmit] = useSubmit(async () => {
    const t = text;
    if (!t.trim()) return;
    if (await onSend(t)) setText('');
  });
  const onKey = (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      e.currentTarget.form.requestSubmit();
    }
  };
  return html`<form class="inline" onSubmit=${onSubmit} data-testid=${`${testid}-form`}>
    <label class="field grow"><span class="label">Message (Enter sends, Shift+Enter for a new line)</span>
      <textarea rows="2" data-testid=${`${testid}-input`} value=${text} onInput=${(e) => setText(e.target.value)} onKeyDown=${onKey}
        placeholder=${placeholder} maxlength="65536"></textarea></label>
    <button type="submit" data-testid=${`${testid}-send`} disabled=${busy || !text.trim()}>${busy ? 'Sending…' : 'Send'}</button>
  </form>`;
}

function Conversation({ peer, who, reloadAll }) {
  const path = `/v1/chat/messages${q({ peer, limit: 200, mark_read: true })}`;
  const msgs = useApi(path, { events: CHAT_EVENTS, throttle: 150 });
  const list = (msgs.data && msgs.data.messages) || [];
  const [ref, onScroll] = useStickToBottom(list.length);
  const p = who.find((x) => x.peer_id === peer || x.contact === peer) || null;
  const peerId = p ? p.peer_id : list[0] ? list[0].peer_id : peer;
  useEffect(() => {
    // Reading marked messages read: the contact list's unread counts change.
    if (list.some((m) => m.state === 'unread')) reloadAll();
  }, [msgs.data]);
  const send = async (text) => {
    const r = await act(() => post('/v1/chat/send', { to: peer, text }), (o) => (o.state === 'delivered' ? null : `Message ${o.state}${o.notes && o.notes.length ? `: ${o.notes[0]}` : ''}`));
    if (r) {
      msgs.reload();
      reloadAll();
    }
    return !!r;
  };
  return html`<${Section} title=${html`Conversation with <span data-testid="conv-name">${p ? displayName(p) : short(peer)}</span>`} testid="chat-conversation"
    actions=${html`<${Presence} status=${p ? p.status : 'offline'} testid="conv-presence" />`}>
    <div class="conv-head hint"><${Id} value=${peerId} testid="conv-peer" />${p && p.last_seen ? html`<span>last seen ${ago(p.last_seen)}</span>` : null}
      ${p && p.nick ? html`<span>nick <strong data-testid="conv-nick">${p.nick}</strong></span>` : null}</div>
    <${ErrorNote} error=${msgs.error} />
    <div class="messages" ref=${ref} onScroll=${onScroll} data-testid="messages" tabindex="0" aria-label="Messages" aria-live="polite">
      ${msgs.data === undefined ? html`<${Loading} />` : list.length === 0 ? html`<${Empty} testid="messages-empty">No messages yet.</${Empty}>` : list.map((m) => html`
        <div key=${m.id} class=${`msg ${m.direction}`} data-testid="message" data-direction=${m.direction} data-state=${m.state} data-id=${m.id}>
          <span data-testid="message-text">${m.text}</span>
          <span class="meta">${fmtTime(m.direction === 'in' ? m.received_at : m.sent_at)} · <span data-testid="message-state" title=${STATE_LABEL[m.state] || m.state}>${m.direction === 'out' ? (m.state === 'delivered' ? '✓✓ delivered' : m.state === 'stored' ? '✓ stored' : '… queued') : m.via === 'mailbox' ? 'via mailbox' : 'direct'}</span></span>
        </div>`)}
    </div>
    <${Composer} onSend=${send} placeholder=${`Message ${p ? displayName(p) : short(peer)}`} />
  </${Section}>`;
}

function Room({ room, who }) {
  const posts = useApi(`/v1/chat/rooms/${encodeURIComponent(room)}/messages${q({ limit: 200 })}`, { events: CHAT_EVENTS, throttle: 150 });
  const members = useApi(`/v1/chat/rooms/${encodeURIComponent(room)}/members`, { events: [...CHAT_EVENTS, 'peer_connected', 'peer_disconnected'], throttle: 500, every: PRESENCE_EVERY });
  const list = (posts.data && posts.data.messages) || [];
  const [ref, onScroll] = useStickToBottom(list.length);
  const send = async (text) => {
    const r = await act(() => post('/v1/chat/rooms/post', { room, text }));
    if (r) posts.reload();
    return !!r;
  };
  const leave = async () => {
    if (await act(() => post('/v1/chat/rooms/leave', { room }), `Left #${room}`)) navigate('/chat');
  };
  const mem = members.data || [];
  return html`<${Section} title=${`#${room}`} testid="chat-room"
    actions=${html`<button type="button" class="small danger" data-testid="room-leave" onClick=${leave}>Leave</button>`}>
    <${ErrorNote} error=${posts.error || members.error} />
    <details open data-testid="room-members">
      <summary data-testid="room-members-toggle">${mem.length} members</summary>
      <ul class="list">${mem.map((m) => html`<li key=${m.peer_id} data-testid="room-member" data-peer=${m.peer_id}><div class="item">
        <span>${displayName(m)} <span class="hint">${m.short_id}</span></span><${Presence} status=${m.status} /></div></li>`)}</ul>
    </details>
    <div class="messages" ref=${ref} onScroll=${onScroll} data-testid="room-posts" tabindex="0" aria-label="Posts" aria-live="polite">
      ${posts.data === undefined ? html`<${Loading} />` : list.length === 0 ? html`<${Empty} testid="room-empty">No posts yet.</${Empty}>` : list.map((m) => html`
        <div key=${`${m.peer_id}-${m.seq}`} class=${`msg ${m.mine ? 'out' : 'in'}`} data-testid="room-post" data-peer=${m.peer_id}>
          ${m.mine ? null : html`<strong>${m.nick || m.short_id}</strong> `}<span data-testid="room-post-text">${m.text}</span>
          <span class="meta">${fmtTime(m.sent_at)}</span>
        </div>`)}
    </div>
    <${Composer} onSend=${send} placeholder=${`Post to #${room}`} testid="room" />
  </${Section}>`;
}

function Conversations({ recent, who, current }) {
  const convs = useMemo(() => {
    const by = new Map();
    for (const m of (recent.data && recent.data.messages) || []) {
      const c = by.get(m.peer_id) || { peer_id: m.peer_id, nick: m.nick, short_id: m.short_id, last: null, unread: 0 };
      if (!c.last || m.n > c.last.n) c.last = m;
      if (m.state === 'unread') c.unread += 1;
      by.set(m.peer_id, c);
    }
    return [...by.values()].sort((a, b) => b.last.n - a.last.n);
  }, [recent.data]);
  const [to, setTo] = useState('');
  const open = (e) => {
    e.preventDefault();
    if (to.trim()) navigate(`/chat/dm/${encodeURIComponent(to.trim())}`);
  };
  return html`<${Section} title="Conversations" testid="chat-conversations">
    ${convs.length === 0 ? html`<${Empty} testid="conversations-empty">No messages yet.</${Empty}>` : html`<ul class="list">
      ${convs.map((c) => {
        const p = who.find((x) => x.peer_id === c.peer_id);
        return html`<li key=${c.peer_id}><a href=${`/chat/dm/${c.peer_id}`} data-testid="conversation-link" data-peer=${c.peer_id}
          aria-current=${current === c.peer_id ? 'true' : undefined}>
          <span><span class="name">${p ? displayName(p) : c.nick || c.short_id}</span>
            <div class="hint">${c.last.direction === 'out' ? 'you: ' : ''}${c.last.text.slice(0, 60)}</div></span>
          <span class="row">${c.unread ? html`<span class="unread" data-testid="conversation-unread">${c.unread}</span>` : null}<${Presence} status=${p ? p.status : 'offline'} /></span>
        </a></li>`;
      })}</ul>`}
    <form class="inline" onSubmit=${open} data-testid="new-dm-form">
      <label class="field grow"><span class="label">Message a peer id or contact</span><input data-testid="new-dm-target" value=${to}
        onInput=${(e) => setTo(e.target.value)} spellcheck="false" autocomplete="off" /></label>
      <button type="submit" data-testid="new-dm-open" disabled=${!to.trim()}>Open</button>
    </form>
  </${Section}>`;
}

export function Chat({ path }) {
  const parts = path.split('/').filter(Boolean); // chat, dm|room, id
  const dm = parts[1] === 'dm' && parts[2] ? decodeURIComponent(parts[2]) : null;
  const room = parts[1] === 'room' && parts[2] ? decodeURIComponent(parts[2]) : null;
  const contacts = useApi('/v1/chat/contacts', { events: [...CHAT_EVENTS, 'peer_connected', 'peer_disconnected'], throttle: 300, every: PRESENCE_EVERY });
  const whoApi = useApi('/v1/chat/who', { events: [...CHAT_EVENTS, 'peer_connected', 'peer_disconnected'], throttle: 300, every: PRESENCE_EVERY });
  const recent = useApi(`/v1/chat/messages${q({ limit: 500 })}`, { events: CHAT_EVENTS, throttle: 200 });
  const who = useMemo(() => {
    const m = new Map();
    for (const p of whoApi.data || []) m.set(p.peer_id, p);
    for (const p of contacts.data || []) m.set(p.peer_id, { ...(m.get(p.peer_id) || {}), ...p });
    return [...m.values()];
  }, [whoApi.data, contacts.data]);
  const unread = useMemo(() => {
    const u = {};
    for (const m of (recent.data && recent.data.messages) || []) if (m.state === 'unread') u[m.peer_id] = (u[m.peer_id] || 0) + 1;
    return u;
  }, [recent.data]);
  const reloadAll = () => {
    contacts.reload();
    recent.reload();
  };
  const dmId = dm && (who.find((p) => p.contact === dm) || {}).peer_id;
  return html`<div class="stack">
    <h1 tabindex="-1">Chat</h1>
    <div class="cards side">
      <div class="stack">
        <${Contacts} contacts=${contacts} unread=${unread} current=${dmId || dm} reload=${reloadAll} />
        <${Rooms} current=${room} />
        <${Profile} />
      </div>
      <div class="stack">
        ${dm ? html`<${Conversation} key=${dm} peer=${dm} who=${who} reloadAll=${reloadAll} />`
          : room ? html`<${Room} key=${room} room=${room} who=${who} />` : null}
        <${Conversations} recent=${recent} who=${who} current=${dmId || dm} />
      </div>
    </div>
  </div>`;
}
