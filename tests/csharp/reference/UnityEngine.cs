// Reference declarations, for tests/test_unity_compile.py only (never shipped, never run): the part of Unity's
// engine API (2021.3 and later) that the package's Runtime/Unity assembly, its samples and its guide's code call, with Unity's
// namespaces, names and signatures. Bodies throw. Compiling against this proves the package's calls name real
// members with the right types; it is not Unity, and what only a Unity editor shows (serialization, the
// Inspector, Play Mode, an IL2CPP build) is not checked by it.
using System;

namespace UnityEngine
{
    public enum HideFlags { None = 0, HideInHierarchy = 1, HideInInspector = 2, DontSaveInEditor = 4, NotEditable = 8,
                            DontSaveInBuild = 16, DontUnloadUnusedAsset = 32, DontSave = 52, HideAndDontSave = 61 }

    public class Object
    {
        public string name { get { throw null; } set { } }
        public HideFlags hideFlags { get { throw null; } set { } }
        public static void Destroy(Object obj) { throw null; }
        public static void DontDestroyOnLoad(Object target) { throw null; }
        public static implicit operator bool(Object exists) { throw null; }
    }

    public struct Vector3
    {
        public float x, y, z;
        public Vector3(float x, float y, float z) { this.x = x; this.y = y; this.z = z; }
        public static float Distance(Vector3 a, Vector3 b) { throw null; }
    }

    public struct Rect
    {
        public Rect(float x, float y, float width, float height) { throw null; }
    }

    public class Transform : Component
    {
        public Vector3 position { get { throw null; } set { } }
    }

    public sealed class GameObject : Object
    {
        public GameObject(string name) { }
        public T AddComponent<T>() where T : Component { throw null; }
        public T GetComponent<T>() { throw null; }
        public bool CompareTag(string tag) { throw null; }
        public Transform transform { get { throw null; } }
        public SceneManagement.Scene scene { get { throw null; } }
    }

    public class Component : Object
    {
        public GameObject gameObject { get { throw null; } }
        public Transform transform { get { throw null; } }
        public string tag { get { throw null; } set { } }
        public T GetComponent<T>() { throw null; }
        public bool CompareTag(string tag) { throw null; }
    }

    public class Behaviour : Component
    {
        public bool enabled { get { throw null; } set { } }
    }

    public class MonoBehaviour : Behaviour { }

    public class ScriptableObject : Object
    {
        public static T CreateInstance<T>() where T : ScriptableObject { throw null; }
    }

    public class TextAsset : Object
    {
        public string text { get { throw null; } }
    }

    public class Animator : Behaviour
    {
        public void SetTrigger(string name) { throw null; }
    }

    public static class JsonUtility
    {
        public static string ToJson(object obj) { throw null; }
        public static T FromJson<T>(string json) { throw null; }
    }

    public class Collider : Component { }
    public class Collider2D : Component { }

    public static class Resources
    {
        public static T Load<T>(string path) where T : Object { throw null; }
    }

    public static class Debug
    {
        public static void Log(object message) { throw null; }
        public static void LogWarning(object message) { throw null; }
        public static void LogError(object message) { throw null; }
        public static void LogException(Exception exception) { throw null; }
    }

    public enum RuntimePlatform { OSXEditor = 0, OSXPlayer = 1, WindowsPlayer = 2, WindowsEditor = 7, LinuxPlayer = 13, LinuxEditor = 16 }

    public static class Application
    {
        public static bool isEditor { get { throw null; } }
        public static bool isPlaying { get { throw null; } }
        public static string streamingAssetsPath { get { throw null; } }
        public static string persistentDataPath { get { throw null; } }
        public static RuntimePlatform platform { get { throw null; } }
        public static event Action quitting { add { } remove { } }
    }

    public enum RuntimeInitializeLoadType { AfterSceneLoad = 0, BeforeSceneLoad = 1, AfterAssembliesLoaded = 2,
                                            BeforeSplashScreen = 3, SubsystemRegistration = 4 }

    [AttributeUsage(AttributeTargets.Method)]
    public class RuntimeInitializeOnLoadMethodAttribute : Attribute
    {
        public RuntimeInitializeOnLoadMethodAttribute() { }
        public RuntimeInitializeOnLoadMethodAttribute(RuntimeInitializeLoadType loadType) { }
    }

    [AttributeUsage(AttributeTargets.Class)]
    public class DefaultExecutionOrder : Attribute
    {
        public DefaultExecutionOrder(int order) { }
    }

    [AttributeUsage(AttributeTargets.Class, AllowMultiple = true)]
    public class RequireComponent : Attribute
    {
        public RequireComponent(Type requiredComponent) { }
    }

    [AttributeUsage(AttributeTargets.Class)]
    public sealed class CreateAssetMenuAttribute : Attribute
    {
        public string menuName { get { throw null; } set { } }
        public string fileName { get { throw null; } set { } }
        public int order { get { throw null; } set { } }
    }

    public abstract class PropertyAttribute : Attribute { }

    [AttributeUsage(AttributeTargets.Field, AllowMultiple = true)]
    public class TooltipAttribute : PropertyAttribute { public TooltipAttribute(string tooltip) { } }

    [AttributeUsage(AttributeTargets.Field, AllowMultiple = true)]
    public class HeaderAttribute : PropertyAttribute { public HeaderAttribute(string header) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class MinAttribute : PropertyAttribute { public MinAttribute(float min) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class RangeAttribute : PropertyAttribute { public RangeAttribute(float min, float max) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public class TextAreaAttribute : PropertyAttribute { public TextAreaAttribute() { } }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class SerializeField : Attribute { }

    public enum KeyCode { None = 0, Return = 13, KeypadEnter = 271 }

    public enum EventType { MouseDown = 0, MouseUp = 1, KeyDown = 4, KeyUp = 5, Repaint = 7, Layout = 8 }

    public sealed class Event
    {
        public static Event current { get { throw null; } set { } }
        public EventType type { get { throw null; } set { } }
        public KeyCode keyCode { get { throw null; } set { } }
        public bool isKey { get { throw null; } }
        public void Use() { throw null; }
    }

    public sealed class GUIStyle { }

    public sealed class GUISkin : Object
    {
        public GUIStyle box { get { throw null; } set { } }
    }

    public sealed class GUILayoutOption { }

    public class GUI
    {
        public static GUISkin skin { get { throw null; } set { } }
        public static void SetNextControlName(string name) { throw null; }
    }

    public class GUILayout
    {
        public static void BeginArea(Rect screenRect, GUIStyle style) { throw null; }
        public static void EndArea() { throw null; }
        public static void BeginHorizontal(params GUILayoutOption[] options) { throw null; }
        public static void EndHorizontal() { throw null; }
        public static void Label(string text, params GUILayoutOption[] options) { throw null; }
        public static string TextField(string text, params GUILayoutOption[] options) { throw null; }
        public static bool Button(string text, params GUILayoutOption[] options) { throw null; }
    }
}

namespace UnityEngine.SceneManagement
{
    public struct Scene
    {
        public string name { get { throw null; } }
    }
}

namespace UnityEngine.Serialization
{
    [AttributeUsage(AttributeTargets.Field, AllowMultiple = true)]
    public class FormerlySerializedAsAttribute : Attribute
    {
        public FormerlySerializedAsAttribute(string oldName) { }
    }
}

namespace UnityEngine.Events
{
    [Serializable]
    public abstract class UnityEventBase { }

    [Serializable]
    public class UnityEvent<T0> : UnityEventBase
    {
        public UnityEvent() { }
        public void AddListener(Action<T0> call) { throw null; }
        public void RemoveListener(Action<T0> call) { throw null; }
        public void Invoke(T0 arg0) { throw null; }
    }
}
