// Reference declarations, for tests/test_unity_compile.py only (never shipped, never run): the part of
// Google.Protobuf's public API (3.21 and later, the runtime that protoc 3.21's --csharp_out targets) that the
// package's generated Runtime/Grpc/Generated/Dialogue.cs and GrpcDialogueTransport.cs call, with the real
// namespaces, names and signatures. Bodies throw. A member the package calls that is missing here, or is called
// with another signature, fails the compile; that is the whole point. This is not Google.Protobuf.
using System;
using System.Collections;
using System.Collections.Generic;

namespace Google.Protobuf
{
    public interface IMessage
    {
        void MergeFrom(CodedInputStream input);
        void WriteTo(CodedOutputStream output);
        int CalculateSize();
        Reflection.MessageDescriptor Descriptor { get; }
    }

    public interface IDeepCloneable<T> { T Clone(); }

    public interface IMessage<T> : IMessage, IEquatable<T>, IDeepCloneable<T> where T : IMessage<T>
    {
        void MergeFrom(T message);
    }

    public interface IBufferMessage : IMessage
    {
        void InternalMergeFrom(ref ParseContext ctx);
        void InternalWriteTo(ref WriteContext ctx);
    }

    public class MessageParser
    {
        internal MessageParser() { }
        public IMessage ParseFrom(byte[] data) { throw null; }
    }

    public sealed class MessageParser<T> : MessageParser where T : IMessage<T>
    {
        public MessageParser(Func<T> factory) { }
        public new T ParseFrom(byte[] data) { throw null; }
    }

    public sealed class CodedInputStream : IDisposable
    {
        public CodedInputStream(byte[] buffer) { }
        public uint ReadTag() { throw null; }
        public string ReadString() { throw null; }
        public uint ReadUInt32() { throw null; }
        public float ReadFloat() { throw null; }
        public bool ReadBool() { throw null; }
        public int ReadEnum() { throw null; }
        public void ReadMessage(IMessage builder) { throw null; }
        public void ReadRawMessage(IMessage message) { throw null; }
        public void Dispose() { }
    }

    public sealed class CodedOutputStream : IDisposable
    {
        public CodedOutputStream(byte[] flatArray) { }
        public void WriteRawTag(byte b1) { throw null; }
        public void WriteRawTag(byte b1, byte b2) { throw null; }
        public void WriteString(string value) { throw null; }
        public void WriteUInt32(uint value) { throw null; }
        public void WriteFloat(float value) { throw null; }
        public void WriteBool(bool value) { throw null; }
        public void WriteEnum(int value) { throw null; }
        public void WriteMessage(IMessage value) { throw null; }
        public void WriteRawMessage(IMessage value) { throw null; }
        public static int ComputeStringSize(string value) { throw null; }
        public static int ComputeUInt32Size(uint value) { throw null; }
        public static int ComputeEnumSize(int value) { throw null; }
        public static int ComputeMessageSize(IMessage value) { throw null; }
        public void Dispose() { }
    }

    // ref structs in the real library; plain structs here (mcs), passed by ref exactly as the generated code does.
    public struct ParseContext
    {
        public uint ReadTag() { throw null; }
        public string ReadString() { throw null; }
        public uint ReadUInt32() { throw null; }
        public float ReadFloat() { throw null; }
        public bool ReadBool() { throw null; }
        public int ReadEnum() { throw null; }
        public void ReadMessage(IMessage message) { throw null; }
    }

    public struct WriteContext
    {
        public void WriteRawTag(byte b1) { throw null; }
        public void WriteRawTag(byte b1, byte b2) { throw null; }
        public void WriteString(string value) { throw null; }
        public void WriteUInt32(uint value) { throw null; }
        public void WriteFloat(float value) { throw null; }
        public void WriteBool(bool value) { throw null; }
        public void WriteEnum(int value) { throw null; }
        public void WriteMessage(IMessage value) { throw null; }
    }

    public sealed class UnknownFieldSet
    {
        public static UnknownFieldSet MergeFieldFrom(UnknownFieldSet unknownFields, CodedInputStream input) { throw null; }
        public static UnknownFieldSet MergeFieldFrom(UnknownFieldSet unknownFields, ref ParseContext ctx) { throw null; }
        public static UnknownFieldSet MergeFrom(UnknownFieldSet unknownFields, UnknownFieldSet other) { throw null; }
        public static UnknownFieldSet Clone(UnknownFieldSet other) { throw null; }
        public void WriteTo(CodedOutputStream output) { throw null; }
        public void WriteTo(ref WriteContext ctx) { throw null; }
        public int CalculateSize() { throw null; }
    }

    public static class ProtoPreconditions
    {
        public static T CheckNotNull<T>(T value, string name) where T : class { throw null; }
    }

    public sealed class JsonFormatter
    {
        public static string ToDiagnosticString(IMessage message) { throw null; }
    }

    public sealed class FieldCodec<T> { internal FieldCodec() { } }

    public static class FieldCodec
    {
        public static FieldCodec<string> ForString(uint tag) { throw null; }
        public static FieldCodec<string> ForString(uint tag, string defaultValue) { throw null; }
        public static FieldCodec<float> ForFloat(uint tag) { throw null; }
        public static FieldCodec<float> ForFloat(uint tag, float defaultValue) { throw null; }
        public static FieldCodec<T> ForMessage<T>(uint tag, MessageParser<T> parser) where T : class, IMessage<T> { throw null; }
    }

    public static class MessageExtensions
    {
        public static byte[] ToByteArray(this IMessage message) { throw null; }
    }
}

namespace Google.Protobuf.Collections
{
    public sealed class RepeatedField<T> : IList<T>, IList, IDeepCloneable<RepeatedField<T>>, IEquatable<RepeatedField<T>>,
                                           IReadOnlyList<T>
    {
        public RepeatedField<T> Clone() { throw null; }
        public void AddEntriesFrom(CodedInputStream input, FieldCodec<T> codec) { throw null; }
        public void AddEntriesFrom(ref ParseContext ctx, FieldCodec<T> codec) { throw null; }
        public int CalculateSize(FieldCodec<T> codec) { throw null; }
        public void WriteTo(CodedOutputStream output, FieldCodec<T> codec) { throw null; }
        public void WriteTo(ref WriteContext ctx, FieldCodec<T> codec) { throw null; }
        public void Add(T item) { throw null; }
        public void AddRange(IEnumerable<T> values) { throw null; }
        public void Add(IEnumerable<T> values) { throw null; }
        public bool Equals(RepeatedField<T> other) { throw null; }
        public override bool Equals(object obj) { throw null; }
        public override int GetHashCode() { throw null; }
        public void Clear() { throw null; }
        public bool Contains(T item) { throw null; }
        public void CopyTo(T[] array, int arrayIndex) { throw null; }
        public bool Remove(T item) { throw null; }
        public int Count { get { throw null; } }
        public bool IsReadOnly { get { throw null; } }
        public IEnumerator<T> GetEnumerator() { throw null; }
        IEnumerator IEnumerable.GetEnumerator() { throw null; }
        public int IndexOf(T item) { throw null; }
        public void Insert(int index, T item) { throw null; }
        public void RemoveAt(int index) { throw null; }
        public T this[int index] { get { throw null; } set { throw null; } }
        bool IList.IsFixedSize { get { throw null; } }
        void ICollection.CopyTo(Array array, int index) { throw null; }
        bool ICollection.IsSynchronized { get { throw null; } }
        object ICollection.SyncRoot { get { throw null; } }
        object IList.this[int index] { get { throw null; } set { throw null; } }
        int IList.Add(object value) { throw null; }
        bool IList.Contains(object value) { throw null; }
        int IList.IndexOf(object value) { throw null; }
        void IList.Insert(int index, object value) { throw null; }
        void IList.Remove(object value) { throw null; }
    }

    public sealed class MapField<TKey, TValue> : IDeepCloneable<MapField<TKey, TValue>>, IDictionary<TKey, TValue>,
                                                 IEquatable<MapField<TKey, TValue>>, IReadOnlyDictionary<TKey, TValue>
    {
        public sealed class Codec
        {
            public Codec(FieldCodec<TKey> keyCodec, FieldCodec<TValue> valueCodec, uint mapTag) { }
        }

        public MapField<TKey, TValue> Clone() { throw null; }
        public void Add(IDictionary<TKey, TValue> entries) { throw null; }
        public void AddEntriesFrom(CodedInputStream input, Codec codec) { throw null; }
        public void AddEntriesFrom(ref ParseContext ctx, Codec codec) { throw null; }
        public void WriteTo(CodedOutputStream output, Codec codec) { throw null; }
        public void WriteTo(ref WriteContext ctx, Codec codec) { throw null; }
        public int CalculateSize(Codec codec) { throw null; }
        public bool Equals(MapField<TKey, TValue> other) { throw null; }
        public override bool Equals(object other) { throw null; }
        public override int GetHashCode() { throw null; }
        public void Add(TKey key, TValue value) { throw null; }
        public bool ContainsKey(TKey key) { throw null; }
        public bool Remove(TKey key) { throw null; }
        public bool TryGetValue(TKey key, out TValue value) { throw null; }
        public TValue this[TKey key] { get { throw null; } set { throw null; } }
        public ICollection<TKey> Keys { get { throw null; } }
        public ICollection<TValue> Values { get { throw null; } }
        IEnumerable<TKey> IReadOnlyDictionary<TKey, TValue>.Keys { get { throw null; } }
        IEnumerable<TValue> IReadOnlyDictionary<TKey, TValue>.Values { get { throw null; } }
        public void Clear() { throw null; }
        public int Count { get { throw null; } }
        public bool IsReadOnly { get { throw null; } }
        void ICollection<KeyValuePair<TKey, TValue>>.Add(KeyValuePair<TKey, TValue> item) { throw null; }
        bool ICollection<KeyValuePair<TKey, TValue>>.Contains(KeyValuePair<TKey, TValue> item) { throw null; }
        void ICollection<KeyValuePair<TKey, TValue>>.CopyTo(KeyValuePair<TKey, TValue>[] array, int arrayIndex) { throw null; }
        bool ICollection<KeyValuePair<TKey, TValue>>.Remove(KeyValuePair<TKey, TValue> item) { throw null; }
        public IEnumerator<KeyValuePair<TKey, TValue>> GetEnumerator() { throw null; }
        IEnumerator IEnumerable.GetEnumerator() { throw null; }
    }

    public static class ProtobufEqualityComparers
    {
        public static EqualityComparer<float> BitwiseSingleEqualityComparer { get { throw null; } }
        public static EqualityComparer<double> BitwiseDoubleEqualityComparer { get { throw null; } }
    }
}

namespace Google.Protobuf.Reflection
{
    public sealed class FileDescriptor
    {
        public static FileDescriptor FromGeneratedCode(byte[] descriptorData, FileDescriptor[] dependencies,
                                                       GeneratedClrTypeInfo generatedCodeInfo) { throw null; }
        public IList<MessageDescriptor> MessageTypes { get { throw null; } }
    }

    public sealed class MessageDescriptor
    {
        public IList<MessageDescriptor> NestedTypes { get { throw null; } }
    }

    public sealed class Extension { }

    public sealed class GeneratedClrTypeInfo
    {
        public GeneratedClrTypeInfo(Type clrType, MessageParser parser, string[] propertyNames, string[] oneofNames,
                                    Type[] nestedEnums, Extension[] extensions, GeneratedClrTypeInfo[] nestedTypes) { }
        public GeneratedClrTypeInfo(Type[] generatedEnums, Extension[] extensions, GeneratedClrTypeInfo[] generatedMessages) { }
    }

    [AttributeUsage(AttributeTargets.Field)]
    public class OriginalNameAttribute : Attribute
    {
        public OriginalNameAttribute(string name) { }
        public string Name { get { throw null; } set { } }
        public bool PreferredAlias { get { throw null; } set { } }
    }
}
