//! The standalone source: a directory of manifests, reread on change, keeping the last good
//! version of every object while a file is broken.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::SourceError;
use super::objects::{
    KubeObject, ObjectKey, ObjectSet, Problem, Severity, SourceLocation, parse_manifests,
};
use crate::translate::{TranslateOptions, Translation, translate};

/// Events closer together than this are handled as one reload (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the tree is scanned when file notifications are unavailable.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Reads a directory of manifests; each [`DirectorySource::load`] rereads it.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    /// Further directories read the same way (the ACME store's Secret manifests), so what
    /// torhaus writes there goes live through the same path as the user's manifests.
    extra_roots: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileState>,
    loaded: bool,
    changed: bool,
}

#[derive(Debug)]
struct FileState {
    text: String,
    objects: Vec<(KubeObject, SourceLocation)>,
    problems: Vec<Problem>,
}

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            extra_roots: Vec::new(),
            files: BTreeMap::new(),
            loaded: false,
            changed: false,
        }
    }

    /// Whether the last [`DirectorySource::load`] saw any file appear, change, vanish or fail
    /// to read (the first load always counts as a change).
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Also reads the manifests under `roots` (each may be missing: it then holds nothing).
    pub fn with_extra_roots(mut self, roots: Vec<PathBuf>) -> Self {
        self.extra_roots = roots;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn all_manifest_files(&self) -> Result<Vec<PathBuf>, SourceError> {
        let mut paths = manifest_files(&self.dir)?;
        for root in &self.extra_roots {
            if root.is_dir() {
                paths.extend(manifest_files(root)?);
            }
        }
        Ok(paths)
    }

    /// Rereads the directory and returns every object it holds now. A file that no longer
    /// parses keeps contributing the objects its last good version held (with an error in
    /// [`ObjectSet::problems`]); a deleted file's objects are gone.
    pub fn load(&mut self) -> Result<ObjectSet, SourceError> {
        let paths = self.all_manifest_files()?;
        let present: BTreeSet<&PathBuf> = paths.iter().collect();
        let before = self.files.len();
        self.files.retain(|path, _| present.contains(path));
        let mut changed = !self.loaded || self.files.len() != before;

        for path in &paths {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(error) => {
                    changed = true;
                    let problem = Problem::error(
                        Some(SourceLocation::file(path, 0)),
                        format!(
                            "cannot read the file: {error}; its last good objects keep serving"
                        ),
                    );
                    if let Some(state) = self.files.get_mut(path) {
                        state.problems = vec![problem];
                    } else {
                        self.files.insert(
                            path.clone(),
                            FileState {
                                text: String::new(),
                                objects: Vec::new(),
                                problems: vec![problem],
                            },
                        );
                    }
                    continue;
                }
            };
            if self.files.get(path).is_some_and(|state| state.text == text) {
                continue;
            }
            changed = true;
            let (mut objects, mut problems) = parse_manifests(&text, path);
            let broken = problems.iter().any(|p| p.severity == Severity::Error);
            if broken && let Some(previous) = self.files.get(path) {
                let fresh: BTreeSet<ObjectKey> = objects.iter().map(|(o, _)| o.key()).collect();
                for (object, location) in &previous.objects {
                    let key = object.key();
                    if !fresh.contains(&key) {
                        problems.push(Problem::warning(
                            Some(location.clone()),
                            format!(
                                "{key} keeps serving its last good version until the file is fixed"
                            ),
                        ));
                        objects.push((object.clone(), location.clone()));
                    }
                }
            }
            self.files.insert(
                path.clone(),
                FileState {
                    text,
                    objects,
                    problems,
                },
            );
        }

        self.changed = changed;
        self.loaded = true;
        let mut set = ObjectSet::default();
        for state in self.files.values() {
            set.problems.extend(state.problems.iter().cloned());
            for (object, location) in &state.objects {
                set.insert(object.clone(), location.clone());
            }
        }
        Ok(set)
    }
}

/// Reads every manifest under `dir` once.
pub fn load_directory(dir: impl AsRef<Path>) -> Result<ObjectSet, SourceError> {
    DirectorySource::new(dir.as_ref()).load()
}

/// How a directory source notices changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// File notifications (inotify), falling back to [`WatchMode::Poll`] when unavailable.
    Notify,
    /// Scanning modification times every 500 ms.
    Poll,
}

/// Loads `dir`, translates it, and keeps doing so on every change (debounced by ~100 ms), on
/// a task of the current tokio runtime. Falls back to scanning every 500 ms when file
/// notifications are unavailable. The task ends when every receiver is dropped.
pub fn spawn_directory_source(
    dir: PathBuf,
    options: TranslateOptions,
) -> Result<watch::Receiver<Arc<Translation>>, SourceError> {
    spawn_directory_source_with(dir, options, WatchMode::Notify)
}

/// [`spawn_directory_source`] with an explicit way of noticing changes.
pub fn spawn_directory_source_with(
    dir: PathBuf,
    options: TranslateOptions,
    mode: WatchMode,
) -> Result<watch::Receiver<Arc<Translation>>, SourceError> {
    spawn_directory_source_with_roots(dir, Vec::new(), options, mode)
}

/// [`spawn_directory_source_with`] that also reads and watches `extra_roots` (created by their
/// owner; a missing one is read as empty).
pub fn spawn_directory_source_with_roots(
    dir: PathBuf,
    extra_roots: Vec<PathBuf>,
    options: TranslateOptions,
    mode: WatchMode,
) -> Result<watch::Receiver<Arc<Translation>>, SourceError> {
    // Watching starts before the first load, so no change made during it is missed.
    let (event_sender, events) = mpsc::unbounded_channel::<()>();
    let watcher = match mode {
        WatchMode::Poll => None,
        WatchMode::Notify => {
            let watcher =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    // Our own reads raise access events: reacting to them would reload forever.
                    // Errors trigger a reload: rereading is always safe.
                    let relevant =
                        event.map_or(true, |e| !matches!(e.kind, notify::EventKind::Access(_)));
                    if relevant {
                        let _ = event_sender.send(());
                    }
                })
                .and_then(|mut watcher| {
                    watcher.watch(&dir, RecursiveMode::Recursive)?;
                    for root in extra_roots.iter().filter(|r| r.is_dir()) {
                        watcher.watch(root, RecursiveMode::Recursive)?;
                    }
                    Ok(watcher)
                });
            match watcher {
                Ok(watcher) => Some(watcher),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "file notifications unavailable; scanning every 500 ms");
                    None
                }
            }
        }
    };
    let mut source = DirectorySource::new(dir).with_extra_roots(extra_roots);
    let fingerprint = watcher.is_none().then(|| tree_fingerprint(&source));
    let objects = source.load()?;
    let (sender, receiver) = watch::channel(Arc::new(translate(&objects, &options)));
    match (watcher, fingerprint) {
        (Some(watcher), _) => {
            tokio::spawn(follow_notifications(
                watcher, events, source, options, sender,
            ));
        }
        (None, fingerprint) => {
            tokio::spawn(follow_by_polling(
                source,
                fingerprint.unwrap_or_default(),
                options,
                sender,
            ));
        }
    }
    Ok(receiver)
}

async fn follow_notifications(
    watcher: notify::RecommendedWatcher,
    mut events: mpsc::UnboundedReceiver<()>,
    mut source: DirectorySource,
    options: TranslateOptions,
    sender: watch::Sender<Arc<Translation>>,
) {
    // The watcher stops when dropped: it lives as long as this task.
    let _watcher = watcher;
    loop {
        tokio::select! {
            event = events.recv() => if event.is_none() { return },
            () = sender.closed() => return,
        }
        tokio::time::sleep(DEBOUNCE).await;
        while events.try_recv().is_ok() {}
        let Some(returned) = reload(source, &options, &sender).await else {
            return;
        };
        source = returned;
    }
}

async fn follow_by_polling(
    mut source: DirectorySource,
    mut last: Fingerprint,
    options: TranslateOptions,
    sender: watch::Sender<Arc<Translation>>,
) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = sender.closed() => return,
        }
        let (current, returned) = match tokio::task::spawn_blocking(move || {
            let fingerprint = tree_fingerprint(&source);
            (fingerprint, source)
        })
        .await
        {
            Ok(done) => done,
            Err(_) => return,
        };
        source = returned;
        if current == last {
            continue;
        }
        last = current;
        let Some(returned) = reload(source, &options, &sender).await else {
            return;
        };
        source = returned;
    }
}

/// Rereads and retranslates off the async threads; returns the source, or `None` when nobody
/// listens any more.
async fn reload(
    mut source: DirectorySource,
    options: &TranslateOptions,
    sender: &watch::Sender<Arc<Translation>>,
) -> Option<DirectorySource> {
    let options = options.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let result = source.load().map(|objects| {
            let read = started.elapsed();
            let translation = source.changed().then(|| translate(&objects, &options));
            tracing::debug!(
                objects = objects.len(),
                read_ms = read.as_millis(),
                translate_ms = (started.elapsed() - read).as_millis(),
                changed = translation.is_some(),
                "reread the manifests"
            );
            translation
        });
        (source, result)
    })
    .await;
    let (source, result) = match joined {
        Ok(done) => done,
        Err(error) => {
            tracing::error!(%error, "reloading the manifests failed; the previous configuration keeps serving");
            return None;
        }
    };
    match result {
        Ok(Some(translation)) => {
            if sender.send(Arc::new(translation)).is_err() {
                return None;
            }
        }
        // Only unrelated files (editor swap files, other extensions) moved.
        Ok(None) => {}
        Err(error) => {
            tracing::error!(%error, "cannot reread the manifests; the previous configuration keeps serving");
        }
    }
    Some(source)
}

/// Manifest files under `dir`, recursively, in path order. Hidden entries are skipped: editors
/// keep swap files there, and a mounted ConfigMap keeps duplicate copies under `..data`.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| SourceError::Io { path, source }
    };
    let metadata = std::fs::metadata(dir).map_err(io_error(dir))?;
    if !metadata.is_dir() {
        return Err(SourceError::NotADirectory(dir.to_owned()));
    }
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).map_err(io_error(&current))? {
            let entry = entry.map_err(io_error(&current))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                pending.push(path);
            } else if is_manifest(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn tree_fingerprint(source: &DirectorySource) -> Fingerprint {
    source
        .all_manifest_files()
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let metadata = std::fs::metadata(&path).ok();
            let modified = metadata.as_ref().and_then(|m| m.modified().ok());
            let len = metadata.map_or(0, |m| m.len());
            (path, modified, len)
        })
        .collect()
}
