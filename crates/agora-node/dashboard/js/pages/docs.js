// Spaces and documents: list spaces and invites, a space's members and documents, a document
// opened and edited (note text, tasks, thread posts, form fields). Live through `docs.*`.
import {
  html, useState, useEffect, useApi, Section, ErrorNote, Id, api, post, act, navigate, useSubmit, fmtNum, fmtTime,
  Empty, Loading, CopyButton,
} from '../lib.js';

const DOCS_EVENTS = ['docs.*'];
const put = (path, body) => api('PUT', path, body);

function Spaces({ current }) {
  const spaces = useApi('/v1/spaces', { events: DOCS_EVENTS, throttle: 300 });
  const [name, setName] = useState('');
  const [busy, onCreate] = useSubmit(async () => {
    const r = await act(() => post('/v1/spaces', { name: name.trim() }), (s) => `Space ${s.name || name} created`);
    if (r) {
      setName('');
      spaces.reload();
      if (r.space) navigate(`/docs/space/${r.space}`);
    }
  });
  const join = async (s) => {
    if (await act(() => post(`/v1/spaces/${s}/join`), 'Joined')) {
      spaces.reload();
      navigate(`/docs/space/${s}`);
    }
  };
  const d = spaces.data || { spaces: [], invites: [] };
  return html`<${Section} title="Spaces" testid="docs-spaces">
    <${ErrorNote} error=${spaces.error} />
    ${spaces.data === undefined ? (spaces.error ? null : html`<${Loading} />`) : d.spaces.length === 0 ? html`<${Empty} testid="spaces-empty">No spaces yet.</${Empty}>` : html`
    <ul class="list">${d.spaces.map((s) => html`<li key=${s.space}><a href=${`/docs/space/${s.space}`} data-testid="space-link" data-space=${s.space}
      aria-current=${current === s.space ? 'true' : undefined}><span class="name">${s.name}</span>
      <span class="hint">${s.role || 'removed'} · ${s.members} members · ${s.docs} docs</span></a></li>`)}</ul>`}
    ${d.invites.length ? html`<h3>Invites</h3><ul class="list">${d.invites.map((i) => html`<li key=${i.space} data-testid="space-invite" data-space=${i.space}>
      <div class="item"><span><span class="name">${i.name}</span><div class="hint">from <${Id} value=${i.from} head=${6} tail=${4} /> as ${i.role || '?'}</div></span>
      <button type="button" class="small" data-testid="space-join" onClick=${() => join(i.space)}>Join</button></div></li>`)}</ul>` : null}
    <form class="inline" onSubmit=${onCreate} data-testid="space-create-form">
      <label class="field grow"><span class="label">New space</span><input data-testid="space-create-name" value=${name} onInput=${(e) => setName(e.target.value)} required /></label>
      <button type="submit" data-testid="space-create-button" disabled=${busy}>Create</button>
    </form>
  </${Section}>`;
}

function Space({ id, currentDoc }) {
  const sp = useApi(`/v1/spaces/${id}`, { events: DOCS_EVENTS, throttle: 300, when: (d) => !d || !d.space || d.space === id });
  const [title, setTitle] = useState('');
  const [kind, setKind] = useState('note');
  const [peer, setPeer] = useState('');
  const [role, setRole] = useState('editor');
  const [busy, onNew] = useSubmit(async () => {
    const r = await act(() => post(`/v1/spaces/${id}/docs`, { title: title.trim(), kind }), (d) => `Created ${d.title}`);
    if (r) {
      setTitle('');
      sp.reload();
      navigate(`/docs/doc/${r.doc}`);
    }
  });
  const [busyInv, onInvite] = useSubmit(async () => {
    const r = await act(() => post(`/v1/spaces/${id}/invite`, { peer: peer.trim(), role }), (o) => (o.delivered ? 'Invite delivered' : 'Invite signed; delivered when the peer connects'));
    if (r) {
      setPeer('');
      sp.reload();
    }
  });
  const s = sp.data;
  const canAdmin = s && (s.role === 'owner' || s.role === 'admin');
  return html`<${Section} title=${s ? s.name : 'Space'} testid="docs-space"
    actions=${s ? html`<${CopyButton} text=${s.space} label="Copy id" what="Space id" testid="copy-space-id" />` : null}>
    <${ErrorNote} error=${sp.error} />
    ${!s ? (sp.error ? null : html`<${Loading} />`) : html`
      <p class="hint">You are ${s.role || 'no longer a member'} · owner <${Id} value=${s.owner} head=${6} tail=${4} /></p>
      <h3>Documents</h3>
      ${s.docs.length === 0 ? html`<${Empty} testid="docs-empty">No documents.</${Empty}>` : html`<ul class="list">
        ${s.docs.map((d) => html`<li key=${d.doc}><a href=${`/docs/doc/${d.doc}`} data-testid="doc-link" data-doc=${d.doc}
          aria-current=${currentDoc === d.doc ? 'true' : undefined}><span class="name">${d.title}</span><span class="hint">${d.kind || '?'} · ${d.changes} changes</span></a></li>`)}</ul>`}
      <form class="inline" onSubmit=${onNew} data-testid="doc-create-form">
        <label class="field grow"><span class="label">New document</span><input data-testid="doc-create-title" value=${title} onInput=${(e) => setTitle(e.target.value)} required /></label>
        <label class="field"><span class="label">Kind</span><select data-testid="doc-create-kind" value=${kind} onChange=${(e) => setKind(e.target.value)}>
          <option value="note">note</option><option value="tasks">tasks</option><option value="thread">thread</option><option value="form">form</option></select></label>
        <button type="submit" data-testid="doc-create-button" disabled=${busy}>Create</button>
      </form>
      <h3>Members (${s.members.length})</h3>
      <ul class="list">${s.members.map((m) => html`<li key=${m.peer} data-testid="space-member"><div class="item"><${Id} value=${m.peer} /><span class="badge">${m.role}</span></div></li>`)}</ul>
      ${canAdmin ? html`<form class="inline" onSubmit=${onInvite} data-testid="space-invite-form">
        <label class="field grow"><span class="label">Invite a peer</span><input data-testid="space-invite-peer" value=${peer} onInput=${(e) => setPeer(e.target.value)} required spellcheck="false" placeholder="12D3KooW…" /></label>
        <label class="field"><span class="label">Role</span><select data-testid="space-invite-role" value=${role} onChange=${(e) => setRole(e.target.value)}>
          <option value="editor">editor</option><option value="reader">reader</option><option value="admin">admin</option></select></label>
        <button type="submit" data-testid="space-invite-button" disabled=${busyInv}>Invite</button>
      </form>` : null}`}
  </${Section}>`;
}

function NoteEditor({ doc, reload }) {
  const [text, setText] = useState(doc.text || '');
  const [base, setBase] = useState(doc.text || '');
  const dirty = text !== base;
  const remoteChanged = (doc.text || '') !== base;
  useEffect(() => {
    // Someone else's edit arrived: take it unless there are unsaved local edits.
    if (!dirty) {
      setText(doc.text || '');
      setBase(doc.text || '');
    }
  }, [doc.text]);
  const [busy, onSave] = useSubmit(async () => {
    const r = await act(() => put(`/v1/docs/${doc.doc}/text`, { text }), 'Saved');
    if (r) {
      setBase(text);
      reload();
    }
  });
  const onKey = (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 's') {
      e.preventDefault();
      e.currentTarget.form.requestSubmit();
    }
  };
  return html`<form class="stacked" onSubmit=${onSave} data-testid="doc-text-form">
    <label class="field"><span class="label">Text (Ctrl+S saves; merged per character with others' edits)</span>
      <textarea class="doc" data-testid="doc-text" value=${text} onInput=${(e) => setText(e.target.value)} onKeyDown=${onKey}></textarea></label>
    ${dirty && remoteChanged ? html`<div class="note" data-testid="doc-remote-changed">Another member changed this document while you were editing. Saving merges your text over theirs;
      <button type="button" class="linkish" data-testid="doc-discard" onClick=${() => { setText(doc.text || ''); setBase(doc.text || ''); }}>discard mine and show theirs</button>.</div>` : null}
    <div class="row"><button type="submit" data-testid="doc-save" disabled=${busy || !dirty}>${busy ? 'Saving…' : dirty ? 'Save' : 'Saved'}</button></div>
  </form>`;
}

function Tasks({ doc, reload }) {
  const [title, setTitle] = useState('');
  const [assign, setAssign] = useState('');
  const [due, setDue] = useState('');
  const [busy, onAdd] = useSubmit(async () => {
    const body = { title: title.trim() };
    if (assign.trim()) body.assign = assign.trim();
    if (due) body.due = due;
    if (await act(() => post(`/v1/docs/${doc.doc}/tasks`, body))) {
      setTitle('');
      reload();
    }
  });
  const setState = async (t, state) => {
    if (await act(() => post(`/v1/docs/${doc.doc}/tasks/${t.task}`, { state }))) reload();
  };
  const items = doc.items || [];
  return html`<div>
    ${items.length === 0 ? html`<${Empty}>No tasks.</${Empty}>` : html`<div class="table-wrap"><table>
      <thead><tr><th>Task</th><th>State</th><th>Assignee</th><th>Due</th></tr></thead>
      <tbody>${items.map((t) => html`<tr key=${t.task} data-testid="doc-task" data-state=${t.state}>
        <td class="wrap">${t.title}</td>
        <td><select data-testid="doc-task-state" value=${t.state} aria-label=${`State of ${t.title}`} onChange=${(e) => setState(t, e.target.value)}>
          <option value="todo">todo</option><option value="doing">doing</option><option value="done">done</option></select></td>
        <td>${t.assignee ? html`<${Id} value=${t.assignee} head=${6} tail=${4} />` : '–'}</td><td>${t.due || '–'}</td></tr>`)}</tbody>
    </table></div>`}
    <form class="inline" onSubmit=${onAdd} data-testid="doc-task-form">
      <label class="field grow"><span class="label">New task</span><input data-testid="doc-task-title" value=${title} onInput=${(e) => setTitle(e.target.value)} required /></label>
      <label class="field"><span class="label">Assign (peer id)</span><input data-testid="doc-task-assign" value=${assign} onInput=${(e) => setAssign(e.target.value)} spellcheck="false" /></label>
      <label class="field"><span class="label">Due</span><input type="date" data-testid="doc-task-due" value=${due} onInput=${(e) => setDue(e.target.value)} /></label>
      <button type="submit" data-testid="doc-task-add" disabled=${busy}>Add</button>
    </form>
  </div>`;
}

function Thread({ doc, reload }) {
  const [text, setText] = useState('');
  const [busy, onPost] = useSubmit(async () => {
    if (await act(() => post(`/v1/docs/${doc.doc}/posts`, { text }))) {
      setText('');
      reload();
    }
  });
  const posts = doc.posts || [];
  return html`<div>
    <div class="messages" data-testid="doc-posts">${posts.length === 0 ? html`<${Empty}>No posts.</${Empty}>` : posts.map((p) => html`
      <div key=${p.post} class="msg in" data-testid="doc-post"><strong><${Id} value=${p.author} head=${6} tail=${4} /></strong> ${p.text}
        <span class="meta">${fmtTime(p.at)}${p.reply_to ? ' · reply' : ''}</span></div>`)}</div>
    <form class="inline" onSubmit=${onPost} data-testid="doc-post-form">
      <label class="field grow"><span class="label">Post</span><textarea rows="2" data-testid="doc-post-text" value=${text} onInput=${(e) => setText(e.target.value)} required></textarea></label>
      <button type="submit" data-testid="doc-post-send" disabled=${busy || !text.trim()}>Post</button>
    </form>
  </div>`;
}

function Fields({ doc, reload }) {
  const [text, setText] = useState(JSON.stringify(doc.fields || {}, null, 2));
  useEffect(() => setText(JSON.stringify(doc.fields || {}, null, 2)), [JSON.stringify(doc.fields)]);
  const [busy, onSave] = useSubmit(async () => {
    let v;
    try {
      v = JSON.parse(text);
    } catch (e) {
      await act(() => Promise.reject(new Error(`not JSON: ${e.message}`)));
      return;
    }
    if (await act(() => put(`/v1/docs/${doc.doc}/fields`, v), 'Saved')) reload();
  });
  return html`<form class="stacked" onSubmit=${onSave} data-testid="doc-fields-form">
    <label class="field"><span class="label">Fields (a JSON object; keys left out are removed)</span>
      <textarea class="doc" data-testid="doc-fields" value=${text} onInput=${(e) => setText(e.target.value)}></textarea></label>
    <div><button type="submit" data-testid="doc-fields-save" disabled=${busy}>Save</button></div>
  </form>`;
}

function Doc({ id, onSpace }) {
  const doc = useApi(`/v1/docs/${id}`, { events: DOCS_EVENTS, throttle: 200, when: (d) => !d || !d.doc || d.doc === id });
  const d = doc.data;
  useEffect(() => {
    if (d && d.space) onSpace(d.space);
  }, [d && d.space]);
  const [title, setTitle] = useState(null);
  const rename = async (e) => {
    e.preventDefault();
    if (await act(() => put(`/v1/docs/${id}/title`, { title }), 'Renamed')) {
      setTitle(null);
      doc.reload();
    }
  };
  return html`<${Section} title=${d ? html`<span data-testid="doc-title">${d.title}</span>` : 'Document'} testid="docs-doc"
    actions=${d ? html`<a href=${`/docs/space/${d.space}`} data-testid="doc-back">Back to the space</a>
      <button type="button" class="small ghost" data-testid="doc-rename" onClick=${() => setTitle(d.title)}>Rename</button>` : null}>
    <${ErrorNote} error=${doc.error} />
    ${!d ? (doc.error ? null : html`<${Loading} />`) : html`
      ${title !== null ? html`<form class="inline" onSubmit=${rename} data-testid="doc-rename-form">
        <label class="field grow"><span class="label">Title</span><input data-testid="doc-rename-title" value=${title} onInput=${(e) => setTitle(e.target.value)} required /></label>
        <button type="submit" data-testid="doc-rename-save">Save</button><button type="button" class="ghost" data-testid="doc-rename-cancel" onClick=${() => setTitle(null)}>Cancel</button></form>` : null}
      <p class="hint">${d.kind || 'unknown kind'} · ${fmtNum(d.changes)} changes by ${d.authors.length} authors</p>
      ${d.kind === 'note' ? html`<${NoteEditor} doc=${d} reload=${doc.reload} />`
        : d.kind === 'tasks' ? html`<${Tasks} doc=${d} reload=${doc.reload} />`
        : d.kind === 'thread' ? html`<${Thread} doc=${d} reload=${doc.reload} />`
        : d.kind === 'form' ? html`<${Fields} doc=${d} reload=${doc.reload} />` : html`<pre>${JSON.stringify(d, null, 2)}</pre>`}
      ${d.attachments && d.attachments.length ? html`<h3>Attachments</h3><ul class="list">${d.attachments.map((a) => html`<li key=${a.hash}><div class="item">
        <span>${a.name}</span><${Id} value=${a.hash} /></div></li>`)}</ul>` : null}`}
  </${Section}>`;
}

export function Docs({ path }) {
  const parts = path.split('/').filter(Boolean); // docs, space|doc, id
  const doc = parts[1] === 'doc' ? parts[2] : null;
  const [docSpace, setDocSpace] = useState(null);
  // An open document shows its space (members, other documents) below it.
  const space = parts[1] === 'space' ? parts[2] : doc ? docSpace : null;
  return html`<div class="stack">
    <h1 tabindex="-1">Spaces and documents</h1>
    <div class="cards side">
      <${Spaces} current=${space} />
      <div class="stack">
        ${doc ? html`<${Doc} key=${doc} id=${doc} onSpace=${setDocSpace} />` : null}
        ${space ? html`<${Space} key=${space} id=${space} />` : null}
        ${!doc && !space ? html`<${Empty} testid="docs-none">Open a space to see its documents and members.</${Empty}>` : null}
      </div>
    </div>
  </div>`;
}
